// Package compose holds the compose templates of a pgnode cluster (embedded) and the Go
// code that renders and ships them (pgdeploy).
package compose

import (
	"fmt"
	"os"
)

// Main runs pgdeploy with its arguments and returns the process exit code.
func Main(args []string) int {
	fmt.Fprintln(os.Stderr, "pgdeploy: not implemented yet")
	return 2
}
