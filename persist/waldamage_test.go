package persist

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/persisttest"
	"github.com/presenced/presenced/internal/testkit"
)

// lockedBuffer is a log sink safe for the store's goroutines.
type lockedBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func newLockedBuffer() *lockedBuffer { return &lockedBuffer{mu: make(chan struct{}, 1)} }
func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string {
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.b.String()
}

// A WAL damaged after the fact (garbage in the middle, cut in half, emptied,
// as after a kill -9 and a bad disk) loses acknowledged, synced sessions
// without Pebble saying a word: Open reports the missing commits, logs them
// at error level, and Stats carries the count.
func TestDamagedWALIsReported(t *testing.T) {
	const n = 200
	damage := map[string]func(b []byte) []byte{
		"garbage-mid": func(b []byte) []byte {
			for i := range 32 {
				b[len(b)/2+i] = byte(i*37 + 11)
			}
			return b
		},
		"cut-half": func(b []byte) []byte { return b[:len(b)/2] },
		"empty":    func([]byte) []byte { return nil },
	}
	for name, f := range damage {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			cfg := testConfig(nil)
			cfg.Dir = dir
			s := mustOpen(t, cfg)
			var src source
			src.start(t, s)
			for i := range n {
				src.upsert(fmt.Sprintf("user%03d", i), "r", 1, 1<<60)
				if err := s.WaitDurable(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			// The watermark vouches for commits a second old: wait for it.
			testkit.Eventually(t, 10*time.Second, "watermark", func() bool {
				wm, ok, _ := readWatermark(s.fs, dir)
				return ok && wm >= n
			})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			wal, _ := persisttest.LargestWAL(t, dir)
			b, _ := os.ReadFile(wal)
			if err := os.WriteFile(wal, f(b), 0o644); err != nil {
				t.Fatal(err)
			}

			out := newLockedBuffer()
			cfg.Logger = slog.New(slog.NewTextHandler(out, nil))
			s = mustOpen(t, cfg)
			defer s.Close()
			live, _, _ := replayAll(t, s, time.Now().UnixMilli())
			d := s.Damage()
			t.Logf("%d of %d sessions back; %v", len(live), n, d)
			if i := strings.Index(out.String(), "wal_replay="); i >= 0 {
				t.Logf("%s", out.String()[i:])
			}
			if len(live) == n {
				t.Fatalf("the damage lost nothing; the test proves nothing")
			}
			if d.LostCommits == 0 || s.Stats().LostCommits != d.LostCommits {
				t.Fatalf("damage not reported: %+v, stats %d", d, s.Stats().LostCommits)
			}
			if missing := uint64(n - len(live)); d.LostCommits < missing {
				t.Errorf("%d sessions missing but only %d lost commits reported", missing, d.LostCommits)
			}
			if log := out.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "write-ahead log damaged") ||
				!strings.Contains(log, "stopped reading at offset") {
				t.Errorf("no error-level log line about the damage and where Pebble stopped:\n%s", log)
			}
		})
	}
}

// An intact log after a clean close or a crash reports no damage.
func TestIntactWALNoDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	cfg := testConfig(nil)
	cfg.Dir = dir
	s := mustOpen(t, cfg)
	var src source
	src.start(t, s)
	for i := range 50 {
		src.upsert(fmt.Sprintf("user%03d", i), "r", 1, 1<<60)
		if err := s.WaitDurable(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, "watermark", func() bool { wm, ok, _ := readWatermark(s.fs, dir); return ok && wm >= 50 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		s = mustOpen(t, cfg)
		live, _, _ := replayAll(t, s, 0)
		if d := s.Damage(); d.LostCommits != 0 || len(live) != 50+i {
			t.Fatalf("intact log: %v, %d sessions", d, len(live))
		}
		var src source
		src.start(t, s)
		src.upsert(fmt.Sprint("more", i), "r", 1, 1<<60)
		if err := s.WaitDurable(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
