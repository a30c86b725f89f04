package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/persisttest"
	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server"
)

// storeConfig is a node config with a write-ahead log in dir.
func storeConfig(dir string) server.Config {
	cfg := server.DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.Persist.Dir = dir
	cfg.UDPLoops = 1
	cfg.LogLevel = "warn"
	cfg.HeartbeatMinGap = 0
	cfg.SourceRate = 0 // batches of 1000 from one address
	return cfg
}

// batchBody is a /v1/heartbeats body for users prefix0..prefix<n-1>.
func batchBody(prefix string, from, n int) string {
	var b strings.Builder
	b.WriteString(`{"heartbeats":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"user":"%s%d","room":"r"}`, prefix, from+i)
	}
	b.WriteString(`]}`)
	return b.String()
}

// Scrapes and reads while Start opens and replays the log: with -race this
// failed (s.store was set by Start while /metrics read it).
func TestScrapeDuringStart(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, func(c *server.Config) { *c = storeConfig(dir) })
	for b := range 10 {
		if code := n.Do("POST", "/v1/heartbeats", batchBody("u", b*1000, 1000), nil); code != 200 {
			t.Fatalf("heartbeats: %d", code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := storeConfig(dir)
	cfg.HTTPAddr = addr
	srv, err := server.New(cfg, server.NewLogger(io.Discard, cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	var (
		stop     atomic.Bool
		answered atomic.Int64
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/metrics", "/readyz", "/v1/users/u1", "/metrics"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && !stop.Load(); i++ {
				resp, err := client.Get("http://" + addr + path)
				if err != nil {
					time.Sleep(time.Millisecond) // paces retries until the server listens
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				answered.Add(1)
			}
		}()
	}
	if err := srv.Start(); err != nil {
		stop.Store(true)
		wg.Wait()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	testkit.Eventually(t, 10*time.Second, "scrapes answered after start", func() bool { return answered.Load() > 20 })
	stop.Store(true)
	wg.Wait()
	n2 := servertest.Attach(t, srv)
	if v := n2.Metric(`presenced_wal_state{state="ok"}`); v != 1 {
		t.Errorf(`presenced_wal_state{state="ok"} = %v after start, want 1`, v)
	}
	if st := n2.Stats(); st.Sessions != 10000 {
		t.Errorf("%d sessions after restart, want 10000", st.Sessions)
	}
}

// A WAL cut in half after a shutdown loses acknowledged sessions; the node
// still starts, and says so in /readyz, in presenced_wal_lost_commits and
// at error level in its log.
func TestDamagedWALReported(t *testing.T) {
	dir := t.TempDir()
	mod := func(c *server.Config) {
		*c = storeConfig(dir)
		c.FsyncMode = "always" // one commit per heartbeat
		c.Persist.Fsync = persist.FsyncModeAlways
	}
	n := startNode(t, mod)
	for i := range 100 {
		if code := n.PostHeartbeat(fmt.Sprint("user", i), "r", ""); code != 200 {
			t.Fatalf("heartbeat: %d", code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	wal, size := persisttest.LargestWAL(t, dir)
	if err := os.Truncate(wal, size/2); err != nil {
		t.Fatal(err)
	}

	var logBuf syncBuf
	cfg := storeConfig(dir)
	mod(&cfg)
	srv, err := server.New(cfg, server.NewLogger(&logBuf, cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	n2 := servertest.Attach(t, srv)
	if st := n2.Stats(); st.Sessions >= 100 {
		t.Fatalf("%d sessions after cutting the log in half: the test proves nothing", st.Sessions)
	}
	var ready struct{ Status, Warning string }
	if code := n2.Do("GET", "/readyz", "", &ready); code != 200 || !strings.Contains(ready.Warning, "write-ahead log damaged") {
		t.Errorf("/readyz %d %+v, want 200 with a warning about the damaged log", code, ready)
	}
	if v := n2.Metric("presenced_wal_lost_commits"); v <= 0 {
		t.Errorf("presenced_wal_lost_commits = %v", v)
	}
	if log := logBuf.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "write-ahead log damaged") {
		t.Errorf("no error-level log line about the damage:\n%s", log)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// With the default --wal-refresh-margin a refresh right after a join is not
// written to the log, yet a clean shutdown writes every session's current
// times: the restarted node shows the last heartbeat's last_seen exactly.
func TestCleanRestartKeepsSkippedRefreshes(t *testing.T) {
	dir := t.TempDir()
	type user struct {
		LastSeen time.Time `json:"last_seen"`
		Online   bool
	}
	n := startNode(t, func(c *server.Config) { *c = storeConfig(dir) })
	for i := range 2 {
		if code := n.Do("POST", "/v1/heartbeat", `{"user":"alice","room":"r"}`, nil); code != 200 {
			t.Fatalf("heartbeat: %d", code)
		}
		if i == 0 { // the join is written first, else both are one change
			testkit.Eventually(t, 10*time.Second, "the join written", func() bool { return n.Metric("presenced_wal_records_total") == 1 })
		}
	}
	testkit.Eventually(t, 10*time.Second, "the second heartbeat skipped by the log", func() bool {
		return n.Metric("presenced_wal_refreshes_skipped_total") == 1
	})
	var before user
	n.Do("GET", "/v1/users/alice", "", &before)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, func(c *server.Config) { *c = storeConfig(dir) })
	var after user
	n2.Do("GET", "/v1/users/alice", "", &after)
	if !after.Online || !after.LastSeen.Equal(before.LastSeen) {
		t.Fatalf("after a clean restart alice is %+v, want online with last_seen %v (the skipped refresh)", after, before.LastSeen)
	}
}
