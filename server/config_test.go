package server

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPrintConfigRedactsSecrets(t *testing.T) {
	for in, want := range map[string]string{
		"":                                    "",
		"127.0.0.1:6379":                      "127.0.0.1:6379",
		"10.0.0.1:7000, 10.0.0.2:7000":        "10.0.0.1:7000, 10.0.0.2:7000",
		"redis://:hunter2-secret@h:6379/0":    "redis://xxxxx@h:6379/0",
		"rediss://app:hunter2-secret@h:6380":  "rediss://xxxxx@h:6380",
		"redis://app:p@ss:w@rd-secret@h:6379": "redis://xxxxx@h:6379",
		"user:hunter2-secret@h:6379,h2:6379":  "xxxxx@h:6379,h2:6379",
	} {
		cfg := DefaultConfig()
		cfg.Redis = in
		var out bytes.Buffer
		PrintConfig(&out, cfg)
		if !strings.Contains(out.String(), "redis = \""+want+"\"\n") {
			t.Errorf("--redis %q: printed config lacks %q:\n%s", in, want, out.String())
		}
		if strings.Contains(out.String(), "hunter2") {
			t.Errorf("--redis %q: printed config shows the password", in)
		}
	}
}

// TestWALRefreshMargin: the default is derived from the TTL, the interval
// and the fsync mode; a margin too small for the crash promise is refused
// naming the bound; one at or past the TTL logs every refresh.
func TestWALRefreshMargin(t *testing.T) {
	for _, c := range []struct {
		name    string
		mod     func(*Config)
		want    time.Duration // persist.Config.RefreshMargin after derive
		wantErr string
	}{
		{"default", func(*Config) {}, 75100 * time.Millisecond, ""}, // 60s*5/4 + 100ms > 150s/2
		{"long ttl", func(c *Config) { c.TTL = 10 * time.Minute }, 5 * time.Minute, ""},
		{"always", func(c *Config) { c.FsyncMode = "always" }, 0, ""},
		{"explicit", func(c *Config) { c.WALRefreshMargin = 100 * time.Second }, 100 * time.Second, ""},
		{"every refresh", func(c *Config) { c.WALRefreshMargin = c.TTL }, 0, ""},
		{"too small", func(c *Config) { c.WALRefreshMargin = 30 * time.Second }, 0, "--wal-refresh-margin (30s) must be at least --interval + --fsync-interval (1m0.1s)"},
		{"negative", func(c *Config) { c.WALRefreshMargin = -time.Second }, 0, "--wal-refresh-margin must not be negative"},
	} {
		cfg := DefaultConfig()
		c.mod(&cfg)
		cfg.derive()
		err := cfg.Validate()
		switch {
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.wantErr)
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.wantErr == "" && cfg.Persist.RefreshMargin != c.want:
			t.Errorf("%s: margin %v, want %v", c.name, cfg.Persist.RefreshMargin, c.want)
		}
	}
}
