package server

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo says which build a binary is: `presenced version` prints it and
// /metrics carries it as presenced_build_info{version,revision,goversion} 1,
// so the versions of a fleet can be told apart.
type BuildInfo struct {
	// Version is the module version ("v1.2.3"; "(devel)" for a build from
	// a checkout), unless -ldflags "-X main.version=..." set one.
	Version string
	// Revision is the VCS commit the binary was built from ("unknown"
	// without VCS information, e.g. a build outside the repository).
	Revision string
	// Modified is true when the work tree had uncommitted changes.
	Modified bool
	// GoVersion is the toolchain that built the binary.
	GoVersion string
	// CommitTime is the revision's commit time (RFC 3339), or empty.
	CommitTime string
	// BuildTime is when the binary was built, as -ldflags
	// "-X main.buildTime=..." set it ("unknown" otherwise: the Go build
	// info carries no build time, so that builds stay reproducible).
	BuildTime string
}

// ReadBuildInfo reads the running binary's build information
// (runtime/debug.ReadBuildInfo). version and buildTime, when not empty,
// replace what the build info says (they come from -ldflags -X).
func ReadBuildInfo(version, buildTime string) BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return buildInfoFrom(bi, version, buildTime)
}

// buildInfoFrom is ReadBuildInfo on bi (nil: a binary without build info).
func buildInfoFrom(bi *debug.BuildInfo, version, buildTime string) BuildInfo {
	b := BuildInfo{Version: "(devel)", Revision: "unknown", GoVersion: "unknown", BuildTime: "unknown"}
	if bi != nil {
		if bi.Main.Version != "" {
			b.Version = bi.Main.Version
		}
		b.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			case "vcs.time":
				b.CommitTime = s.Value
			}
		}
	}
	if version != "" {
		b.Version = version
	}
	if buildTime != "" {
		b.BuildTime = buildTime
	}
	return b
}

// RevisionLabel is the revision with "-modified" appended when the tree
// had uncommitted changes: the revision label of presenced_build_info.
func (b BuildInfo) RevisionLabel() string {
	if b.Modified {
		return b.Revision + "-modified"
	}
	return b.Revision
}

// String is the text `presenced version` prints: one "key: value" a line.
func (b BuildInfo) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "presenced %s\n", b.Version)
	mod := ""
	if b.Modified {
		mod = " (modified)"
	}
	fmt.Fprintf(&sb, "revision: %s%s\n", b.Revision, mod)
	if b.CommitTime != "" {
		fmt.Fprintf(&sb, "commit time: %s\n", b.CommitTime)
	}
	fmt.Fprintf(&sb, "go: %s\n", b.GoVersion)
	fmt.Fprintf(&sb, "build time: %s\n", b.BuildTime)
	return sb.String()
}

// SetBuildInfo replaces the build information /metrics reports (by default
// ReadBuildInfo("", "")). Call it before Start.
func (s *Server) SetBuildInfo(b BuildInfo) { s.build = b }

// registerBuildInfo registers presenced_build_info, read at scrape time.
func (s *Server) registerBuildInfo() {
	s.reg.family("presenced_build_info", "Build of this binary: module version, VCS revision (\"-modified\" when the tree had uncommitted changes) and Go version; always 1.",
		[]string{"version", "revision", "goversion"}, func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, 1, s.build.Version, s.build.RevisionLabel(), s.build.GoVersion)
		})
}
