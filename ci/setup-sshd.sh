#!/usr/bin/env bash
# Installs what the compose/pgdeploy tests need: Debian's openssh-server (the tests start
# their own sshd on a loopback port with a test-only config; the system service is left
# disabled) and the openssh client tools (ssh-keygen). Idempotent and fast when done.
set -euo pipefail
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the package's postinst from starting the system sshd on port 22.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
# sshd needs its privilege-separation directory.
mkdir -p /run/sshd
chmod 0755 /run/sshd
/usr/sbin/sshd -V 2>&1 | head -1 || true
