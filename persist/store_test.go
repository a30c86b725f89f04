package persist

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/shardmap"
)

func TestConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil {
		t.Fatal("empty Dir validated")
	}
	cfg.Dir = "x"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.FsyncInterval = 0 },
		func(c *Config) { c.LastSeenRetention = -1 },
		func(c *Config) { c.SweepInterval = 0 },
		func(c *Config) { c.MaxPendingBytes = 1 },
		func(c *Config) { c.Fsync = 9 },
	} {
		c := cfg
		bad(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "cannot validate") {
			t.Errorf("bad config validated: %+v (err %v)", c, err)
		}
	}
	for _, m := range []FsyncMode{FsyncModeInterval, FsyncModeAlways, FsyncModeOff} {
		got, err := ParseFsyncMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseFsyncMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseFsyncMode("sometimes"); err == nil {
		t.Error("ParseFsyncMode accepted sometimes")
	}
}

func TestCommitReplayLastSeen(t *testing.T) {
	fs := vfs.NewMem()
	cfg := testConfig(fs)
	s := mustOpen(t, cfg)
	if _, _, st := replayAll(t, s, 0); st.Unclean || st.Live != 0 {
		t.Fatalf("fresh store: %+v", st)
	}
	var src source
	src.start(t, s)
	src.upsert("alice", "r1", 1000, 151000)
	src.upsert("alice", "r2", 1200, 151200)
	src.upsert("bob", "r1", 900, 150900)
	src.upsert("carol", "", 800, 150800) // online only
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.end("bob", "r1", 1500, 150900)
	src.upsert("alice", "r1", 2000, 152000) // refresh
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user string
		want int64
		ok   bool
	}{
		// Live users' last-seen is in their session records (Replay); the
		// user's own record appears once a session ends.
		{"alice", 0, false}, {"bob", 1500, true}, {"carol", 0, false}, {"dave", 0, false},
	} {
		ms, ok, err := s.LastSeen([]byte(c.user))
		if err != nil || ok != c.ok || ms != c.want {
			t.Errorf("LastSeen(%s) = %d, %v, %v; want %d, %v", c.user, ms, ok, err, c.want, c.ok)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}

	s = mustOpen(t, cfg)
	defer s.Close()
	live, expired, st := replayAll(t, s, 100000)
	if st.Unclean {
		t.Error("clean Close reported as unclean")
	}
	want := map[[2]string]session{
		{"alice", "r1"}: {"alice", "r1", 2000, 152000},
		{"alice", "r2"}: {"alice", "r2", 1200, 151200},
		{"carol", ""}:   {"carol", "", 800, 150800},
	}
	if len(live) != len(want) || len(expired) != 0 {
		t.Fatalf("live %v expired %v", live, expired)
	}
	for k, w := range want {
		if live[k] != w {
			t.Errorf("live[%v] = %v, want %v", k, live[k], w)
		}
	}
	st2 := s.Stats()
	if st2.ReplayLive != 3 || st2.DiskBytes == 0 {
		t.Errorf("stats after replay: %+v", st2)
	}
}

func TestReplayExpires(t *testing.T) {
	cfg := testConfig(vfs.NewMem())
	s := mustOpen(t, cfg)
	var src source
	src.start(t, s)
	src.upsert("u1", "r", 1000, 5000)
	src.upsert("u2", "r", 1000, 9000)
	src.upsert("u3", "r", 3000, 20000)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, cfg)
	live, expired, st := replayAll(t, s, 10000)
	if st.Live != 1 || st.Expired != 2 || len(live) != 1 || len(expired) != 2 {
		t.Fatalf("live %v expired %v stats %+v", live, expired, st)
	}
	if e := expired[[2]string{"u2", "r"}]; e.expiry != 9000 || e.lastSeen != 1000 {
		t.Errorf("expired u2 = %+v", e)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The expired records are gone; last-seen survives them.
	s = mustOpen(t, cfg)
	defer s.Close()
	live, expired, _ = replayAll(t, s, 10000)
	if len(live) != 1 || len(expired) != 0 {
		t.Fatalf("second replay: live %v expired %v", live, expired)
	}
	if ms, ok, err := s.LastSeen([]byte("u1")); ms != 1000 || !ok || err != nil {
		t.Errorf("LastSeen(u1) = %d %v %v", ms, ok, err)
	}
}

func TestReplayError(t *testing.T) {
	cfg := testConfig(vfs.NewMem())
	s := mustOpen(t, cfg)
	var src source
	src.start(t, s)
	src.upsert("u1", "r", 1000, 5000)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, cfg)
	defer s.Close()
	boom := errors.New("boom")
	_, err := s.Replay(0, func(u, r []byte, ls, ex int64) error { return boom }, func(u, r []byte, ls, ex int64) {})
	if !errors.Is(err, boom) {
		t.Fatalf("Replay error = %v", err)
	}
}

func TestUncleanShutdown(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := testConfig(fs)
	s := mustOpen(t, cfg)
	defer s.Close()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	cfg.FS = crashed
	s2 := mustOpen(t, cfg)
	_, _, st := replayAll(t, s2, 0)
	if !st.Unclean || !s2.Stats().Unclean {
		t.Fatal("crash not reported as unclean")
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s3 := mustOpen(t, cfg)
	defer s3.Close()
	if _, _, st := replayAll(t, s3, 0); st.Unclean {
		t.Fatal("clean close after an unclean one still reported unclean")
	}
}

// The last-seen merger keeps the maximum whatever order rooms drain in.
func TestLastSeenNeverGoesBack(t *testing.T) {
	s := mustOpen(t, testConfig(vfs.NewMem()))
	defer s.Close()
	var src source
	src.start(t, s)
	src.upsert("u", "a", 5000, 9000)
	src.upsert("u", "b", 3000, 9000) // same cycle, older
	src.upsert("v", "a", 1, 9000)
	src.upsert("u", "c", 4000, 9000) // not contiguous
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.end("u", "a", 5000, 9000)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.end("u", "b", 3500, 9000) // later cycle, older
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ms, _, _ := s.LastSeen([]byte("u")); ms != 5000 {
		t.Fatalf("LastSeen = %d, want 5000", ms)
	}
	st := s.Stats()
	// Cycle 1: 4 session sets, no last-seen (live). Cycles 2 and 3: a delete and a last-seen each.
	if st.SessionSets != 4 || st.SessionDeletes != 2 || st.LastSeenWrites != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestWaitDurableModes(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncModeInterval, FsyncModeAlways, FsyncModeOff} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := testConfig(vfs.NewMem())
			cfg.Fsync = mode
			cfg.FsyncInterval = time.Hour // only waiters start cycles
			s := mustOpen(t, cfg)
			if err := s.WaitDurable(context.Background()); !errors.Is(err, ErrNotStarted) {
				t.Fatalf("WaitDurable before Start: %v", err)
			}
			var src source
			src.start(t, s)
			var wg sync.WaitGroup
			const waiters = 50
			for i := range waiters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					src.upsert("u"+string(rune('a'+i%26)), "r", int64(i), 1e12)
					if err := s.WaitDurable(context.Background()); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			st := s.Stats()
			if st.SyncCount == 0 || st.SyncCount > waiters {
				t.Errorf("SyncCount = %d for %d waiters", st.SyncCount, waiters)
			}
			t.Logf("%d waiters shared %d synced cycles", waiters, st.SyncCount)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := s.WaitDurable(ctx); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled WaitDurable: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.WaitDurable(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("WaitDurable after Close: %v", err)
			}
		})
	}
}

// In off mode a cycle's changes reach the OS (they survive a process crash:
// a clone that keeps all unsynced data) without Pebble being asked to wait.
func TestOffModeSurvivesProcessCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := testConfig(fs)
	cfg.Fsync = FsyncModeOff
	s := mustOpen(t, cfg)
	defer s.Close()
	var src source
	src.start(t, s)
	src.upsert("u", "r", 1, 1e12)
	testkit.Eventually(t, 10*time.Second, "a batch", func() bool { return s.Stats().Batches > 0 })
	cfg.FS = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 1))})
	s2 := mustOpen(t, cfg)
	defer s2.Close()
	if live, _, _ := replayAll(t, s2, 0); len(live) != 1 {
		t.Fatalf("off mode lost a committed change on process crash: %v", live)
	}
}

func TestSweep(t *testing.T) {
	cfg := testConfig(vfs.NewMem())
	cfg.LastSeenRetention = time.Hour
	cfg.SweepInterval = 20 * time.Millisecond
	s := mustOpen(t, cfg)
	defer s.Close()
	now := int64(10 * 3600 * 1000)
	s.now = func() int64 { return now }
	s.firstSweepDelay = time.Millisecond
	var src source
	src.start(t, s)
	for i := range 3 * sweepChunk { // more than one chunk
		u := "old" + string(rune('A'+i%50)) + string(rune('A'+i/50%50)) + string(rune('A'+i/2500))
		src.end(u, "r", now-2*3600*1000, 0)
	}
	src.end("recent", "r", now-1000, 0)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "sweep", func() bool { return s.Stats().SweepDeletes >= 3*sweepChunk })
	if _, ok, _ := s.LastSeen([]byte("recent")); !ok {
		t.Error("recent user swept")
	}
	if _, ok, _ := s.LastSeen([]byte("oldAAA")); ok {
		t.Error("old user kept")
	}
}

// Changes past MaxPendingBytes are dropped and counted, not buffered.
func TestBacklogBound(t *testing.T) {
	cfg := testConfig(vfs.NewMem())
	cfg.MaxPendingBytes = 1024
	s := mustOpen(t, cfg)
	defer s.Close()
	for i := range 100 {
		s.Add(&shardmap.Change{User: []byte{byte(i), 'u'}, Room: []byte("room"), LastSeen: 1, Expiry: 2})
	}
	st := s.Stats()
	if st.DroppedChanges == 0 || st.PendingBytes > 1024 {
		t.Fatalf("stats %+v", st)
	}
	s.Add(&shardmap.Change{User: nil})
	if s.Stats().DroppedChanges != st.DroppedChanges+1 {
		t.Error("empty user not dropped")
	}
}

// A test that compiles the real map into the loop: heartbeats, leaves and
// expiries flow through Drain into the store and back through Restore.
func TestWithShardmap(t *testing.T) {
	mcfg := shardmap.DefaultConfig()
	mcfg.TrackChanges = true
	m, err := shardmap.New(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(vfs.NewMem())
	s := mustOpen(t, cfg)
	s.Start(func() { m.Drain(s.Add) }) // the server's flush hook, without its pump
	now := int64(1_000_000)
	for i := range 100 {
		if _, err := m.Touch([]byte("user"+string(rune('A'+i%26))+string(rune('A'+i/26))), []byte("room"), now, 150_000); err != nil {
			t.Fatal(err)
		}
	}
	m.Leave([]byte("userAA"), []byte("room"), now+10)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	m2, _ := shardmap.New(mcfg)
	s = mustOpen(t, cfg)
	defer s.Close()
	st, err := s.Replay(now+20, func(u, r []byte, ls, ex int64) error {
		_, err := m2.Restore(u, r, ls, ex, now+20)
		return err
	}, func(u, r []byte, ls, ex int64) {})
	if err != nil {
		t.Fatal(err)
	}
	if st.Live != 99 || m2.Stats().Sessions != 99 {
		t.Fatalf("replay %+v, map %+v", st, m2.Stats())
	}
	if ms, ok, _ := s.LastSeen([]byte("userAA")); !ok || ms < now {
		t.Errorf("LastSeen(userAA) = %d %v", ms, ok)
	}
}
