package main

import (
	"io"

	"github.com/presenced/presenced/loadtest"
)

// loadtestCmd implements `presenced loadtest`.
func loadtestCmd(args []string, stdout, stderr io.Writer) int {
	return loadtest.Main(args, stdout, stderr)
}
