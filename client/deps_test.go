package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientDependencies keeps the client light: the standard library and
// the codec packages only, never the server or its dependencies.
func TestClientDependencies(t *testing.T) {
	const mod = "github.com/presenced/presenced"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", mod+"/client").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		switch d {
		case mod + "/client", mod + "/server/wire", mod + "/server/token":
		default:
			t.Errorf("client imports %s; it may use only the standard library, server/wire and server/token", d)
		}
	}
}
