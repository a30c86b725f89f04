package persist

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/shardmap"
)

// source is a stand-in for the server's change log (shardmap.Map.Drain):
// changes queued by the test are handed out, in order, by the next drain.
type source struct {
	mu      sync.Mutex
	pending []shardmap.Change
	spare   []shardmap.Change
}

func (s *source) upsert(user, room string, lastSeen, expiry int64) {
	s.mu.Lock()
	s.pending = append(s.pending, shardmap.Change{User: []byte(user), Room: []byte(room), LastSeen: lastSeen, Expiry: expiry})
	s.mu.Unlock()
}

func (s *source) end(user, room string, lastSeen, expiry int64) {
	s.mu.Lock()
	s.pending = append(s.pending, shardmap.Change{User: []byte(user), Room: []byte(room), LastSeen: lastSeen, Expiry: expiry,
		Ended: true, Reason: shardmap.ReasonLeft, At: lastSeen})
	s.mu.Unlock()
}

// drain calls fn for every queued change, holding the source's lock as
// the map holds a shard lock: a drain that took changes has handed all of
// them to fn before another drain returns.
func (s *source) drain(fn func(*shardmap.Change)) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.pending {
		fn(&s.pending[i])
	}
	n := len(s.pending)
	s.pending, s.spare = s.spare[:0], s.pending[:0]
	return n
}

// start starts st the way the server does: a pump hands the source's
// changes to Add every millisecond, and Start's flush hook drains it
// synchronously (WaitDurable, Close). The pump stops when the test ends.
func (s *source) start(t testing.TB, st *Store) {
	t.Helper()
	flush := func() { s.drain(st.Add) }
	st.Start(flush)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				flush()
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig(fs vfs.FS) Config {
	cfg := DefaultConfig()
	cfg.Dir = "db"
	cfg.FS = fs
	cfg.FsyncInterval = 5 * time.Millisecond
	cfg.Logger = quietLogger()
	return cfg
}

func mustOpen(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type session struct {
	user, room       string
	lastSeen, expiry int64
}

// replayAll replays s and returns the live and expired sessions.
func replayAll(t testing.TB, s *Store, now int64) (live, expired map[[2]string]session, st ReplayStats) {
	t.Helper()
	live, expired = map[[2]string]session{}, map[[2]string]session{}
	st, err := s.Replay(now, func(u, r []byte, ls, ex int64) error {
		live[[2]string{string(u), string(r)}] = session{string(u), string(r), ls, ex}
		return nil
	}, func(u, r []byte, ls, ex int64) {
		expired[[2]string{string(u), string(r)}] = session{string(u), string(r), ls, ex}
	})
	if err != nil {
		t.Fatal(err)
	}
	return live, expired, st
}

// countKeys counts the keys in [lower, upper).
func countKeys(t testing.TB, db *pebble.DB, lower, upper []byte) int {
	t.Helper()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for v := it.First(); v; v = it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	return n
}
