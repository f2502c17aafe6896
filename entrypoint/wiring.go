package entrypoint

import (
	"fmt"
	"os"
)

// cmdBackup runs `pgnode backup …` (package backup).
func cmdBackup(args []string) int {
	fmt.Fprintln(os.Stderr, "pgnode backup: not available in this build")
	return 2
}

// cmdUpgrade runs `pgnode upgrade …` (package upgrade).
func cmdUpgrade(args []string) int {
	fmt.Fprintln(os.Stderr, "pgnode upgrade: not available in this build")
	return 2
}
