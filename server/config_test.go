package server

import (
	"bytes"
	"strings"
	"testing"
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
