// Command standin is used ONLY by compose's ship tests while the real pgnode image is
// absent, so that pgdeploy's SSH upload, rollout order and idempotence are checked against
// the real Docker engine and a real Consul. It does not pretend to run PostgreSQL: `run`
// waits for SIGTERM and `health` exits 0. The end-to-end test (TestShipE2E) uses the real
// pgnode image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "health" {
		os.Exit(0)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
