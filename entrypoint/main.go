// Package entrypoint is the agent's core: environment -> validated config, rendering of
// patroni.yml and the WAL-G config, the bootstrap decision, running and supervising
// Patroni as PID 1, and health checks. It composes the upgrade and backup packages.
package entrypoint

import (
	"fmt"
	"os"
)

// Main dispatches pgnode's subcommands and returns the exit code.
func Main(args []string) int {
	fmt.Fprintln(os.Stderr, "pgnode: not implemented yet")
	return 2
}
