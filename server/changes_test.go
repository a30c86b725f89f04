package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/cluster/redistest"
	"github.com/presenced/presenced/server/testkit"
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

// startInternal runs a server with cfg on free loopback ports for the
// tests of this package that need its fields (the black-box ones use
// server/servertest, which cannot be imported here).
func startInternal(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.HTTPAddr, cfg.UDPAddr = "127.0.0.1:0", ""
	cfg.LogLevel = "warn"
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

func postHeartbeat(t *testing.T, s *Server, user, room string) {
	t.Helper()
	resp, err := http.Post("http://"+s.HTTPAddr()+"/v1/heartbeat", "application/json",
		strings.NewReader(fmt.Sprintf(`{"user":%q,"room":%q}`, user, room)))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("heartbeat %s: %d", user, resp.StatusCode)
	}
}

// onlineWhole reports whether s answers user online in a whole (not
// partial) answer.
func onlineWhole(t *testing.T, s *Server, user string) bool {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTPAddr() + "/v1/users/" + user)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u struct{ Online, Partial bool }
	if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
		t.Fatal(err)
	}
	return u.Online && !u.Partial
}

func clusterConfig(redis string) Config {
	cfg := DefaultConfig()
	cfg.Redis = redis
	cfg.DataDir = ""
	cfg.SourceRate = 0
	cfg.HeartbeatMinGap = 0
	cfg.Cluster.FlushInterval = 20 * time.Millisecond
	return cfg
}

// The log's disk hangs on a node (every WAL sync waits): the heartbeats it
// takes still reach Redis, so another node sees its users online. The
// change pump feeds the Redis writer whatever the log does; when the log's
// committer drained the change log, replication stalled with it.
func TestReplicationGoesOnWhileLogHangs(t *testing.T) {
	r := redistest.Start(t)
	hang := newHangingWAL()
	cfgA := clusterConfig(r.Addr())
	cfgA.DataDir = t.TempDir()
	cfgA.Persist.FS = errorfs.Wrap(vfs.Default, hang)
	a := startInternal(t, cfgA)
	t.Cleanup(hang.free) // before A's Shutdown: cleanups run last first
	b := startInternal(t, clusterConfig(r.Addr()))

	postHeartbeat(t, a, "before", "lobby")
	testkit.Eventually(t, 5*time.Second, "before visible on B", func() bool { return onlineWhole(t, b, "before") })

	hang.on.Store(true)
	postHeartbeat(t, a, "first", "lobby") // its commit waits for the hung sync
	testkit.Eventually(t, 5*time.Second, "a WAL sync of A's log hanging", func() bool { return hang.hung.Load() > 0 })
	batches := a.store.Stats().Batches
	postHeartbeat(t, a, "alice", "lobby")
	testkit.Eventually(t, 5*time.Second, "alice, who heartbeated A while its log hangs, online on B", func() bool {
		return onlineWhole(t, b, "alice")
	})
	if n := a.store.Stats().Batches; n != batches {
		t.Fatalf("A's log committed %d batches while its WAL sync hung: the test did not hang it", n-batches)
	}
}

// --fsync=always: a heartbeat is answered once it is in the log. The reply
// waits in WaitDurable, whose flush hook drains the change log at once
// (the pump's tick is not awaited), so the record is committed by then.
func TestFsyncAlwaysReplyAfterCommit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.FsyncMode = "always"
	cfg.Persist.FsyncInterval = time.Hour // no cycle but the waiters'
	s := startInternal(t, cfg)
	for i, user := range []string{"alice", "bob", "carol"} {
		postHeartbeat(t, s, user, "lobby")
		if st := s.store.Stats(); st.SessionSets != uint64(i+1) || st.SyncCount < uint64(i+1) {
			t.Fatalf("after %s's heartbeat was answered: %d session records written, %d syncs; want %d",
				user, st.SessionSets, st.SyncCount, i+1)
		}
	}
	if s.storeState() != persist.StateOK {
		t.Errorf("store state %v", s.storeState())
	}
}
