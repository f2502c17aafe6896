package entrypoint

import "golang.org/x/sys/unix"

// setChildSubreaper makes orphaned descendants (a postmaster whose Patroni died) our
// children, so that we can fence and reap them even when we are not PID 1.
func setChildSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}
