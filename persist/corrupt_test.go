package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/internal/persisttest"
)

// writeFlushed writes n live sessions and n offline users' last-seen to a
// store in dir, flushes them to an sstable and closes the store cleanly.
func writeFlushed(t *testing.T, dir string, n int) {
	t.Helper()
	cfg := testConfig(nil)
	cfg.Dir = dir
	s := mustOpen(t, cfg)
	var src source
	src.start(t, s)
	for i := range n {
		src.upsert(fmt.Sprintf("user%05d", i), "room", 1000, 1<<60)
		src.upsert(fmt.Sprintf("gone%05d", i), "room", 2000, 1<<60)
		src.end(fmt.Sprintf("gone%05d", i), "room", 2000, 1<<60)
	}
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.dbMu.RLock()
	err := s.db.Flush()
	s.dbMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// A flipped block in an sstable makes Open or Replay fail with an error
// naming the file (not a panic), and Repair keeps every readable session.
func TestCorruptSSTableAndRepair(t *testing.T) {
	const n = 3000
	dir := filepath.Join(t.TempDir(), "db")
	writeFlushed(t, dir, n)
	sst := persisttest.FlipSSTable(t, dir)

	cfg := testConfig(nil)
	cfg.Dir = dir
	err := func() error {
		s, err := Open(cfg)
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = s.Replay(0, func(_, _ []byte, _, _ int64) error { return nil }, func(_, _ []byte, _, _ int64) {})
		return err
	}()
	var ce *CorruptionError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("opening a store with a flipped sstable block: got %v, want a CorruptionError", err)
	}
	if !strings.Contains(err.Error(), sst) || !strings.Contains(err.Error(), "presenced repair") {
		t.Fatalf("error %q does not name %s and the repair command", err, sst)
	}

	// Not while a node holds Pebble's lock on it.
	lock, err := vfs.Default.Lock(filepath.Join(dir, "LOCK"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Repair(cfg); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Repair of a store in use: %v, want a refusal", err)
	}
	lock.Close()

	st, err := Repair(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("repair: %+v", st)
	if st.Skipped == 0 || len(st.Damaged) == 0 || !strings.Contains(st.Damaged[0], sst) {
		t.Errorf("repair did not report the damaged file %s: %+v", sst, st)
	}
	if _, err := os.Stat(filepath.Join(st.MovedTo, sst)); err != nil {
		t.Errorf("damaged store not kept aside: %v", err)
	}
	s := mustOpen(t, cfg)
	defer s.Close()
	live, _, rs := replayAll(t, s, 0)
	if rs.Unclean {
		t.Error("repaired store reported as unclean")
	}
	// One 4 KiB block holds about 150 of these records: most survive.
	if len(live) != st.Sessions || len(live) < n/2 || len(live) == n {
		t.Fatalf("%d sessions back after repair (copied %d of %d)", len(live), st.Sessions, n)
	}
	lastSeen := 0
	for i := range n {
		if ms, ok, err := s.LastSeen(fmt.Appendf(nil, "gone%05d", i)); err != nil {
			t.Fatal(err)
		} else if ok {
			if ms != 2000 {
				t.Fatalf("last-seen of gone%05d is %d, want 2000", i, ms)
			}
			lastSeen++
		}
	}
	if lastSeen != st.LastSeen || lastSeen < n/2 {
		t.Fatalf("%d last-seen records back (copied %d of %d)", lastSeen, st.LastSeen, n)
	}
	for u := range live {
		if s := live[u]; s.lastSeen != 1000 || s.expiry != 1<<60 || !strings.HasPrefix(s.user, "user") {
			t.Fatalf("repaired session %+v differs from what was written", s)
		}
	}
}

// Pebble's Fatalf on its own goroutine ends the process with status 1 and
// the reason; under a persist call that recovers it, it panics instead.
func TestFatalfOnPebbleGoroutineExitsOne(t *testing.T) {
	exited := make(chan struct{}, 1)
	old := fatalExit
	fatalExit = func() { exited <- struct{}{}; runtime.Goexit() }
	defer func() { fatalExit = old }()
	out := newLockedBuffer()
	l := pebbleLogger{log: slog.New(slog.NewTextHandler(out, nil))}
	go l.Fatalf("MANIFEST %s", "write failed") // as on a Pebble flush goroutine
	<-exited
	if !strings.Contains(out.String(), "pebble cannot continue") || !strings.Contains(out.String(), "MANIFEST write failed") {
		t.Errorf("no reason logged: %s", out)
	}

	s := mustOpen(t, testConfig(vfs.NewMem()))
	defer s.Close()
	err := s.apply(func(*pebble.DB) error { l.Fatalf("recoverable"); return nil })
	if err == nil || !strings.Contains(err.Error(), "recoverable") || !s.c.broken {
		t.Errorf("Fatalf under a commit: %v (broken %v), want an error and a reopen", err, s.c.broken)
	}
}
