package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the dependencies one-way:
// main -> server -> {shardmap, persist}; shardmap, the wire codec and the
// heartbeat body parser (server/internal/jsonbody) and the goroutine tracker that
// persist and server share (internal/routine) use only the standard library;
// persist never imports server (its tests only the stdlib-only poll helper
// internal/testkit); loadtest speaks the protocol through the codec packages
// only.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/presenced/presenced"
	deps := func(pkg string) []string {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		var d []string
		for _, l := range strings.Fields(string(out)) {
			if l != pkg {
				d = append(d, l)
			}
		}
		return d
	}
	allowed := map[string][]string{
		mod + "/shardmap":                 nil,
		mod + "/internal/routine":         nil,
		mod + "/server/wire":              nil,
		mod + "/server/internal/jsonbody": nil,
		mod + "/server/token":             {mod + "/server/wire"},
		mod + "/internal/testkit":         nil,
		mod + "/internal/persisttest":     nil,
	}
	for pkg, ok := range allowed {
		for _, d := range deps(pkg) {
			if !contains(ok, d) {
				t.Errorf("%s must use only the standard library (and %v), imports %s", pkg, ok, d)
			}
		}
	}
	for _, d := range deps(mod + "/persist") {
		if strings.HasPrefix(d, mod+"/server") {
			t.Errorf("persist imports %s", d)
		}
	}
	// persist's tests import nothing of server (their helpers are the
	// stdlib-only internal/testkit and internal/persisttest): a test-only
	// import of server code would hide the cycle.
	out, err := exec.Command("go", "list", "-f", `{{join .TestImports " "}} {{join .XTestImports " "}}`, mod+"/persist").Output()
	if err != nil {
		t.Fatalf("go list persist test imports: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, mod+"/server") {
			t.Errorf("persist's tests import %s; nothing of server is allowed", d)
		}
	}
	for _, d := range deps(mod + "/loadtest") {
		if strings.HasPrefix(d, mod+"/") && d != mod+"/server/wire" && d != mod+"/server/token" {
			t.Errorf("loadtest imports %s; it may use only the codec packages", d)
		}
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
