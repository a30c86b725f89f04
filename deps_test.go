package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the one-way dependencies of STYLE.md:
// main -> server -> {shardmap, persist}; shardmap, the wire codec and the
// heartbeat body parser (server/jsonbody) use only the standard library;
// persist never imports server; loadtest speaks the protocol through the
// codec packages only.
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
		mod + "/shardmap":        nil,
		mod + "/server/wire":     nil,
		mod + "/server/jsonbody": nil,
		mod + "/server/token":    {mod + "/server/wire"},
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
