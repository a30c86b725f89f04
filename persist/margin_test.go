package persist

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/shardmap"
)

// TestRefreshMarginCrashPromise drives a real map on a virtual clock: users
// heartbeat every interval (with jitter) into a log that skips refreshes
// (RefreshMargin), the log commits after every step, and at random moments
// the disk is cloned as a crash would leave it. It checks the promise of
// Config.RefreshMargin on every clone: each session comes back with an
// expiry at least RefreshMargin-interval-jitter after the crash (so it is
// still alive when its client's next heartbeat comes) and a last-seen at
// most TTL-RefreshMargin older than its last heartbeat; and that the log
// wrote about one record per TTL-RefreshMargin per session, not one per
// heartbeat.
func TestRefreshMarginCrashPromise(t *testing.T) {
	const (
		ttl      = int64(150_000)
		interval = int64(60_000)
		jitter   = int64(5_000) // a heartbeat may come this late
		margin   = int64(76_000)
		users    = 200
		base     = int64(1_780_000_000_000)
		steps    = 40 // virtual seconds between steps: 10
	)
	m, err := shardmap.New(shardmap.Config{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	fs := vfs.NewCrashableMem()
	cfg := testConfig(fs)
	cfg.RefreshMargin = time.Duration(margin) * time.Millisecond
	s := mustOpen(t, cfg)
	defer s.Close()
	s.Start(func() { m.Drain(s.Add) }) // the server's flush hook, without its pump
	rng := rand.New(rand.NewPCG(1, 2))
	next := make([]int64, users) // next heartbeat time per user
	last := make([]int64, users) // last heartbeat time per user
	for u := range next {
		next[u] = base + rng.Int64N(interval)
	}
	heartbeats := 0
	crashes := 0
	for step := int64(1); step <= steps; step++ {
		now := base + step*10_000
		for u := range next {
			for next[u] <= now {
				if _, err := m.Touch(fmt.Appendf(nil, "u%d", u), []byte("r"), next[u], ttl); err != nil {
					t.Fatal(err)
				}
				last[u] = next[u]
				next[u] += interval + rng.Int64N(jitter)
				heartbeats++
			}
		}
		if err := s.WaitDurable(context.Background()); err != nil {
			t.Fatal(err)
		}
		if step < 8 || step%5 != 0 {
			continue
		}
		crashes++
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(uint64(step), 3))})
		r := mustOpen(t, testConfig(crashed))
		live, _, _ := replayAll(t, r, now)
		r.Close()
		for u := range last {
			got, ok := live[[2]string{fmt.Sprintf("u%d", u), "r"}]
			switch {
			case !ok:
				t.Fatalf("step %d: u%d (last heartbeat %d ms before the crash) did not survive it", step, u, now-last[u])
			case got.expiry < now+margin-interval-jitter:
				t.Fatalf("step %d: u%d restored with an expiry %d ms after the crash, promised at least %d", step, u, got.expiry-now, margin-interval-jitter)
			case got.lastSeen < last[u]-(ttl-margin):
				t.Fatalf("step %d: u%d restored with a last-seen %d ms older than its last heartbeat, promised at most %d", step, u, last[u]-got.lastSeen, ttl-margin)
			}
		}
	}
	st := s.Stats()
	refreshes := uint64(heartbeats - users)
	t.Logf("%d heartbeats (%d refreshes), %d session records written, %d refreshes skipped, %d crashes checked", heartbeats, refreshes, st.SessionSets, st.SkippedRefresh, crashes)
	if st.SkippedRefresh+st.SessionSets != uint64(heartbeats) {
		t.Fatalf("records %d + skipped %d != heartbeats %d", st.SessionSets, st.SkippedRefresh, heartbeats)
	}
	// With interval 60-65 s and TTL-margin 74 s every second refresh is
	// written: anything near one per heartbeat means the margin is ignored.
	if st.SkippedRefresh < refreshes*2/5 || st.SkippedRefresh > refreshes*3/5 {
		t.Fatalf("skipped %d of %d refreshes, want about half", st.SkippedRefresh, refreshes)
	}
}

// TestRefreshMarginStateAndRelog: a state change is written at once even
// inside the margin, and Map.Relog makes the next drain write every session
// with its current times (a server's clean shutdown).
func TestRefreshMarginStateAndRelog(t *testing.T) {
	m, err := shardmap.New(shardmap.Config{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	fs := vfs.NewMem()
	cfg := testConfig(fs)
	cfg.RefreshMargin = time.Minute
	s := mustOpen(t, cfg)
	s.Start(func() { m.Drain(s.Add) }) // the server's flush hook, without its pump
	ctx := context.Background()
	const base = int64(1_780_000_000_000)
	touch := func(at int64, state string) {
		t.Helper()
		op := shardmap.StateOp{}
		if state != "" {
			op = shardmap.StateOp{Set: true, State: []byte(state)}
		}
		if _, err := m.TouchState([]byte("alice"), []byte("r"), at, 150_000, op); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitDurable(ctx); err != nil {
			t.Fatal(err)
		}
	}
	touch(base, "")
	touch(base+1_000, "")                // skipped: the log holds base+150s
	touch(base+2_000, `{"mood":"busy"}`) // written: another state
	touch(base+3_000, "")                // skipped
	if st := s.Stats(); st.SessionSets != 2 || st.SkippedRefresh != 2 {
		t.Fatalf("session records %d, skipped %d; want 2 and 2", st.SessionSets, st.SkippedRefresh)
	}
	m.Relog()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, testConfig(fs))
	defer r.Close()
	var got session
	var state string
	if _, err := r.ReplayStates(base, func(u, room, st []byte, ls, ex int64) error {
		got, state = session{string(u), string(room), ls, ex}, string(st)
		return nil
	}, func([]byte, []byte, int64, int64) {}); err != nil {
		t.Fatal(err)
	}
	if got.lastSeen != base+3_000 || got.expiry != base+153_000 || state != `{"mood":"busy"}` {
		t.Fatalf("after Relog and a clean close: %+v state %q; want last-seen +3s, expiry +153s, the state", got, state)
	}
}
