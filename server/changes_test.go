package server_test

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/internal/redistest"
)

// hangingWAL makes every sync of a write-ahead log file wait while on, as a
// disk that stops answering does (a hung network mount, a dying drive),
// until free is called.
type hangingWAL struct {
	on       atomic.Bool
	hung     atomic.Int64 // syncs that started waiting
	released chan struct{}
	once     sync.Once
}

func newHangingWAL() *hangingWAL { return &hangingWAL{released: make(chan struct{})} }

func (h *hangingWAL) free() { h.once.Do(func() { close(h.released) }) }

func (h *hangingWAL) String() string { return "hanging-wal" }

func (h *hangingWAL) MaybeError(op errorfs.Op) error {
	if !h.on.Load() || !strings.HasSuffix(op.Path, ".log") {
		return nil
	}
	switch op.Kind {
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		h.hung.Add(1)
		<-h.released
	}
	return nil
}

// The log's disk hangs on a node (every WAL sync waits): the heartbeats it
// takes still reach Redis, so another node sees its users online. The
// change pump feeds the Redis writer whatever the log does; when the log's
// committer drained the change log, replication stalled with it.
func TestReplicationGoesOnWhileLogHangs(t *testing.T) {
	r := redistest.Start(t)
	hang := newHangingWAL()
	cfgA := clusterTestConfig(r.Addr())
	cfgA.DataDir = t.TempDir()
	cfgA.Persist.FS = errorfs.Wrap(vfs.Default, hang)
	a := startCluster(t, cfgA)
	t.Cleanup(hang.free) // before A's Shutdown: cleanups run last first
	b := startCluster(t, clusterTestConfig(r.Addr()))
	whole := func(user string) bool { u := b.User(user); return u.Online && !u.Partial }

	a.Heartbeat("before", "lobby")
	testkit.Eventually(t, 5*time.Second, "before visible on B", func() bool { return whole("before") })

	hang.on.Store(true)
	a.Heartbeat("first", "lobby") // its commit waits for the hung sync
	testkit.Eventually(t, 5*time.Second, "a WAL sync of A's log hanging", func() bool { return hang.hung.Load() > 0 })
	batches := a.Srv.StoreForTest().Stats().Batches
	a.Heartbeat("alice", "lobby")
	testkit.Eventually(t, 5*time.Second, "alice, who heartbeated A while its log hangs, online on B", func() bool { return whole("alice") })
	if n := a.Srv.StoreForTest().Stats().Batches; n != batches {
		t.Fatalf("A's log committed %d batches while its WAL sync hung: the test did not hang it", n-batches)
	}
}

// --fsync=always: a heartbeat is answered once it is in the log. The reply
// waits in WaitDurable, whose flush hook drains the change log at once
// (the pump's tick is not awaited), so the record is committed by then.
func TestFsyncAlwaysReplyAfterCommit(t *testing.T) {
	n := servertest.Start(t, func(cfg *server.Config) {
		cfg.DataDir = t.TempDir()
		cfg.FsyncMode = "always"
		cfg.Persist.FsyncInterval = time.Hour // no cycle but the waiters'
	})
	store := n.Srv.StoreForTest()
	for i, user := range []string{"alice", "bob", "carol"} {
		n.Heartbeat(user, "lobby")
		if st := store.Stats(); st.SessionSets != uint64(i+1) || st.SyncCount < uint64(i+1) {
			t.Fatalf("after %s's heartbeat was answered: %d session records written, %d syncs; want %d",
				user, st.SessionSets, st.SyncCount, i+1)
		}
	}
	if st := store.State(); st != persist.StateOK {
		t.Errorf("store state %v", st)
	}
}
