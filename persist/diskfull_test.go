package persist

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/presenced/presenced/internal/testkit"
)

// diskFull fails writes with ENOSPC while on, as a full
// disk does, and counts the sstables Pebble tries to create. With
// dataOnly it fails only WAL and sstable files: a disk with room left for
// the small MANIFEST and directory updates but not for a flush, which is
// where a full disk leaves pebble.Open retrying forever.
type diskFull struct {
	on         atomic.Bool
	dataOnly   bool
	sstCreates atomic.Int64
}

func (f *diskFull) String() string { return "disk-full" }
func (f *diskFull) MaybeError(op errorfs.Op) error {
	if !f.on.Load() || f.dataOnly && !strings.HasSuffix(op.Path, ".log") && !strings.HasSuffix(op.Path, ".sst") {
		return nil
	}
	// As on a real full disk (tmpfs, ext4): creating an empty file and
	// syncing a file whose writes failed succeed; writing data fails.
	switch op.Kind {
	case errorfs.OpCreate:
		if strings.HasSuffix(op.Path, ".sst") {
			f.sstCreates.Add(1)
		}
	case errorfs.OpFilePreallocate, errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileFlush:
		return &os.PathError{Op: "write", Path: op.Path, Err: syscall.ENOSPC}
	}
	return nil
}

// within runs f and fails the test if it has not returned after d: a call
// that must never wait on the disk would hang for good here.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s still waiting after %v", what, d)
		panic("unreachable")
	}
}

// A full disk: the WAL write fails, Pebble declares the DB dead, and its
// reopen cannot finish (pebble.Open must flush the log it replays). Reads
// and stats answer at once, Pebble's flush retries back off, Close keeps its
// deadline, and once space frees everything written is there.
func TestDiskFullNeverWaits(t *testing.T) {
	mem := vfs.NewMem()
	faults := &diskFull{dataOnly: true}
	cfg := testConfig(errorfs.Wrap(mem, faults))
	s := mustOpen(t, cfg)
	var src source
	src.start(t, s)
	src.upsert("before", "r", 1, 1<<60)
	src.end("gone", "r", 5, 1<<60)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}

	faults.on.Store(true)
	src.upsert("during", "r", 2, 1<<60)
	testkit.Eventually(t, 10*time.Second, "state unavailable", func() bool { return s.State() == StateUnavailable })
	if err := s.Healthy(); err == nil {
		t.Error("Healthy is nil while the database is down")
	}
	err := within(t, 10*time.Second, "LastSeen", func() error {
		_, _, err := s.LastSeen([]byte("gone"))
		return err
	})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("LastSeen while the database is down: %v, want ErrUnavailable", err)
	}
	within(t, 10*time.Second, "Stats", func() Stats { return s.Stats() })

	// Pebble retries the flush of its replayed log at once, forever; the
	// backoff (50ms doubling to 5s) allows about 6 attempts in 2 s where a
	// busy loop on an in-memory FS makes thousands.
	start := faults.sstCreates.Load()
	time.Sleep(2 * time.Second)
	n := faults.sstCreates.Load() - start
	t.Logf("%d sstable creations in 2s on a full disk", n)
	if n > 30 {
		t.Errorf("%d sstable creations in 2s on a full disk: Pebble's retries do not back off", n)
	}

	faults.on.Store(false)
	testkit.Eventually(t, 10*time.Second, "state ok after space freed", func() bool { return s.State() == StateOK })
	src.upsert("after", "r", 3, 1<<60)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ms, ok, err := s.LastSeen([]byte("gone")); err != nil || !ok || ms != 5 {
		t.Errorf("LastSeen after recovery: %d %v %v", ms, ok, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, testConfig(mem))
	defer s.Close()
	live, _, _ := replayAll(t, s, 0)
	for _, u := range []string{"before", "during", "after"} {
		if _, ok := live[[2]string{u, "r"}]; !ok {
			t.Errorf("%s lost across the full disk (have %d sessions)", u, len(live))
		}
	}
}

// Close on a disk that stays full returns by its deadline with an error,
// leaving the store unclean for the next start.
func TestDiskFullCloseKeepsDeadline(t *testing.T) {
	mem := vfs.NewMem()
	faults := &diskFull{}
	s := mustOpen(t, testConfig(errorfs.Wrap(mem, faults)))
	var src source
	src.start(t, s)
	src.upsert("before", "r", 1, 1<<60)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	faults.on.Store(true)
	src.upsert("during", "r", 2, 1<<60)
	testkit.Eventually(t, 10*time.Second, "state unavailable", func() bool { return s.State() == StateUnavailable })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := within(t, 15*time.Second, "CloseContext", func() error { return s.CloseContext(ctx) })
	if err == nil {
		t.Fatal("CloseContext on a full disk returned nil")
	}
	t.Logf("close: %v", err)
	if s.State() != StateClosed {
		t.Errorf("state %v after Close", s.State())
	}
}

// Open on a disk that is still full (its log must be flushed to replay)
// fails after OpenTimeout naming the storage error, instead of hanging.
func TestDiskFullOpenTimesOut(t *testing.T) {
	crash := vfs.NewCrashableMem()
	s := mustOpen(t, testConfig(crash))
	var src source
	src.start(t, s)
	for i := range 100 {
		src.upsert(fmt.Sprintf("u%d", i), "r", 1, 1<<60)
	}
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	crashed := crash.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 2))})
	_ = s.Close()

	faults := &diskFull{dataOnly: true}
	faults.on.Store(true)
	cfg := testConfig(errorfs.Wrap(crashed, faults))
	cfg.OpenTimeout = 300 * time.Millisecond
	err := within(t, 15*time.Second, "Open", func() error {
		_, err := Open(cfg)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "not open after") {
		t.Fatalf("Open on a full disk: %v, want a timeout naming the storage error", err)
	}
	faults.on.Store(false) // let the abandoned attempts finish and close
}
