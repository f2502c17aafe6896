// Command pgdeploy renders and ships the per-node compose bundles of a pgnode cluster.
package main

import (
	"os"

	"pgnode/compose"
)

func main() {
	os.Exit(compose.Main(os.Args[1:]))
}
