package server_test

import (
	"os"
	"testing"

	"github.com/presenced/presenced/internal/testkit"
)

// TestMain deletes the presenced binaries the benchmarks built
// (testkit.Build) when the test process ends.
func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBuilds()
	os.Exit(code)
}
