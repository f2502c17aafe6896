// Command pgnode is the in-image agent and the container's PID 1. See `pgnode help`.
package main

import (
	"os"

	"pgnode/entrypoint"
)

func main() {
	os.Exit(entrypoint.Main(os.Args[1:]))
}
