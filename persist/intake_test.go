package persist

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/shardmap"
)

// sessionRecord reads the committed record of (user, room).
func sessionRecord(t *testing.T, s *Store, user, room string) (lastSeen, expiry int64, found bool) {
	t.Helper()
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	v, closer, err := s.db.Get(appendSessionKey(nil, []byte(user), []byte(room)))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	lastSeen, expiry, _, ok := decodeSessionValue(v)
	if !ok {
		t.Fatalf("bad session record %x", v)
	}
	return lastSeen, expiry, true
}

// --fsync=always: WaitDurable right after a Touch returns with that
// heartbeat committed, though nothing but the flush hook moved it out of
// the map (no pump, and no cycle of the committer's own in the hour).
func TestWaitDurableAfterTouch(t *testing.T) {
	mcfg := shardmap.DefaultConfig()
	mcfg.TrackChanges = true
	m, err := shardmap.New(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(vfs.NewMem())
	cfg.Fsync = FsyncModeAlways
	cfg.FsyncInterval = time.Hour
	s := mustOpen(t, cfg)
	defer s.Close()
	s.Start(func() { m.Drain(s.Add) })

	const now = 1_000_000
	if _, err := m.Touch([]byte("alice"), []byte("room"), now, 150_000); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ls, ex, ok := sessionRecord(t, s, "alice", "room"); !ok || ls != now || ex != now+150_000 {
		t.Fatalf("after WaitDurable: record %d %d %v, want %d %d", ls, ex, ok, now, now+150_000)
	}
	if st := s.Stats(); st.SessionSets != 1 || st.SyncCount == 0 {
		t.Errorf("stats %+v", st)
	}

	m.Leave([]byte("alice"), []byte("room"), now+500)
	if err := s.WaitDurable(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := sessionRecord(t, s, "alice", "room"); ok {
		t.Error("session record still there after the leave was made durable")
	}
	if ms, ok, err := s.LastSeen([]byte("alice")); err != nil || !ok || ms != now {
		t.Errorf("LastSeen = %d %v %v, want %d (the last heartbeat)", ms, ok, err, now)
	}
}

// Changes added while commits fail wait behind the backlog: later cycles'
// changes are applied after older ones (an end after its upsert), each
// user's last-seen keeps its maximum across cycles, and the bound counts
// the backlog and the intake together.
func TestIntakeBehindFailedBacklog(t *testing.T) {
	faults := &walFaults{}
	cfg := testConfig(errorfs.Wrap(vfs.NewMem(), faults))
	cfg.MaxPendingBytes = 4 << 10
	s := mustOpen(t, cfg)
	defer s.Close()
	add := func(c shardmap.Change) { s.Add(&c) }
	end := func(user, room string, lastSeen int64) shardmap.Change {
		return shardmap.Change{User: []byte(user), Room: []byte(room), LastSeen: lastSeen, Expiry: 1 << 60,
			Ended: true, Reason: shardmap.ReasonLeft, At: lastSeen}
	}

	faults.on.Store(true)
	add(shardmap.Change{User: []byte("u"), Room: []byte("r"), LastSeen: 1, Expiry: 1 << 60})
	add(end("v", "r1", 10))
	if err := s.cycle(true); err == nil {
		t.Fatal("commit succeeded with the WAL failing")
	}
	add(end("u", "r", 20))
	add(end("v", "r2", 5)) // older than v's last-seen in the backlog
	_ = s.cycle(true)
	backlog := s.Stats().PendingBytes
	if backlog == 0 {
		t.Fatal("no pending bytes while commits fail")
	}
	dropped := s.Stats().DroppedChanges
	for i := 0; s.Stats().DroppedChanges == dropped; i++ {
		if i == 1000 {
			t.Fatal("nothing dropped past MaxPendingBytes")
		}
		add(shardmap.Change{User: []byte{'x', byte(i), byte(i >> 8)}, Room: []byte("r"), LastSeen: 1, Expiry: 1 << 60})
	}
	if p := s.Stats().PendingBytes; p > cfg.MaxPendingBytes || p <= backlog {
		t.Errorf("pending %d bytes (backlog %d, bound %d)", p, backlog, cfg.MaxPendingBytes)
	}

	faults.on.Store(false)
	testkit.Eventually(t, 10*time.Second, "a commit after the fault", func() bool { return s.cycle(true) == nil })
	if _, _, ok := sessionRecord(t, s, "u", "r"); ok {
		t.Error("u's session came back: its end was applied before its upsert")
	}
	for user, want := range map[string]int64{"u": 20, "v": 10} {
		if ms, ok, err := s.LastSeen([]byte(user)); err != nil || !ok || ms != want {
			t.Errorf("LastSeen(%s) = %d %v %v, want %d", user, ms, ok, err, want)
		}
	}
	if p := s.Stats().PendingBytes; p != 0 {
		t.Errorf("pending %d bytes after a successful commit", p)
	}
}
