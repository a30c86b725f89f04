package server

import (
	"runtime/debug"
	"strings"
	"testing"
)

// TestBuildInfoFromVCS: what `presenced version` and presenced_build_info
// say for a binary built in a git checkout with uncommitted changes, with
// -ldflags setting the version and the build time, and for one without
// any build info.
func TestBuildInfoFromVCS(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/presenced/presenced", Version: "v0.0.0-20261207215725-fabf5e61d780+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "fabf5e61d780b687a8b8fe81497ee2a650e1cfa1"},
			{Key: "vcs.time", Value: "2026-12-07T21:57:25Z"},
			{Key: "vcs.modified", Value: "true"},
		}}
	b := buildInfoFrom(bi, "", "")
	if b.Version != "v0.0.0-20261207215725-fabf5e61d780+dirty" || b.Revision != "fabf5e61d780b687a8b8fe81497ee2a650e1cfa1" || !b.Modified ||
		b.GoVersion != "go1.26.8" || b.CommitTime != "2026-12-07T21:57:25Z" || b.BuildTime != "unknown" {
		t.Fatalf("%+v", b)
	}
	if got := b.RevisionLabel(); got != "fabf5e61d780b687a8b8fe81497ee2a650e1cfa1-modified" {
		t.Fatalf("revision label %q", got)
	}
	for _, want := range []string{"revision: fabf5e61d780b687a8b8fe81497ee2a650e1cfa1 (modified)\n", "go: go1.26.8\n", "commit time: 2026-12-07T21:57:25Z\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("version text lacks %q:\n%s", want, b)
		}
	}
	b = buildInfoFrom(bi, "v1.4.0", "2026-12-07T22:00:00Z")
	if b.Version != "v1.4.0" || b.BuildTime != "2026-12-07T22:00:00Z" || !strings.HasPrefix(b.String(), "presenced v1.4.0\n") {
		t.Fatalf("-ldflags values not used: %+v", b)
	}
	if b := buildInfoFrom(nil, "", ""); b.Revision != "unknown" || b.Version != "(devel)" || b.Modified {
		t.Fatalf("no build info: %+v", b)
	}
}
