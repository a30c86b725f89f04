package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/server/cluster/redistest"
)

// cnode is one in-process presenced node of a test cluster.
type cnode struct {
	t    *testing.T
	s    *Server
	base string
	ev   *sseLog
}

// clusterTestConfig is a fast cluster: short TTL, frequent reaps and checks.
func clusterTestConfig(redisAddrs string) Config {
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.UDPLoops = 1
	cfg.LogLevel = "warn"
	cfg.Redis = redisAddrs
	cfg.TTL = 3 * time.Second
	cfg.Interval = time.Second
	cfg.SweepInterval = 50 * time.Millisecond
	cfg.HeartbeatMinGap = 0
	cfg.SourceRate = 0
	cfg.Cluster.FlushInterval = 20 * time.Millisecond
	cfg.Cluster.ReapInterval = 100 * time.Millisecond
	cfg.Cluster.HealthInterval = 200 * time.Millisecond
	return cfg
}

func startCluster(t *testing.T, cfg Config) *cnode {
	t.Helper()
	var w io.Writer = io.Discard
	if os.Getenv("PRESENCED_TEST_LOG") != "" {
		w = os.Stderr
	}
	s, err := New(cfg, slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	n := &cnode{t: t, s: s, base: "http://" + s.HTTPAddr()}
	n.ev = n.events()
	waitFor(t, 5*time.Second, "redis up", func() bool { return s.cl.Up() && s.cl.Stats().Reasserts > 0 })
	return n
}

// kill stops the node as a crash would for the cluster: its writer and
// reaper stop without writing what they hold, then intake stops.
func (n *cnode) kill() {
	n.s.cl.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.s.Shutdown(ctx)
}

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var testHTTP = &http.Client{Timeout: 5 * time.Second}

func (n *cnode) do(method, path, body string, out any) int {
	n.t.Helper()
	req, err := http.NewRequest(method, n.base+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	resp, err := testHTTP.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			n.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

func (n *cnode) heartbeat(user, room string) {
	n.t.Helper()
	if c := n.do("POST", "/v1/heartbeat", fmt.Sprintf(`{"user":%q,"room":%q}`, user, room), nil); c != 200 {
		n.t.Fatalf("heartbeat %s/%s: status %d", user, room, c)
	}
}

type cUser struct {
	User     string   `json:"user"`
	Online   bool     `json:"online"`
	Rooms    []string `json:"rooms"`
	LastSeen *string  `json:"last_seen"`
	Partial  bool     `json:"partial"`
}

func (n *cnode) user(u string) cUser {
	var out cUser
	n.do("GET", "/v1/users/"+url.PathEscape(u), "", &out)
	return out
}

func (n *cnode) roomOnline(r string) (int, bool) {
	var out struct {
		Online  int  `json:"online"`
		Partial bool `json:"partial"`
	}
	n.do("GET", "/v1/rooms/"+url.PathEscape(r), "", &out)
	return out.Online, out.Partial
}

type cStatsOut struct {
	OnlineUsers int64 `json:"online_users"`
	Sessions    int64 `json:"sessions"`
	Rooms       int64 `json:"rooms"`
	Partial     bool  `json:"partial"`
}

func (n *cnode) stats() cStatsOut {
	var out cStatsOut
	n.do("GET", "/v1/stats", "", &out)
	return out
}

// sseLog records the events of one GET /v1/events stream.
type sseLog struct {
	mu  sync.Mutex
	evs []sseEvent
}

type sseEvent struct {
	Type   string
	User   string `json:"user"`
	Room   string `json:"room"`
	Reason string `json:"reason"`
}

func (n *cnode) events() *sseLog {
	l := &sseLog{}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.base+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		n.t.Fatalf("GET /v1/events: %v", err)
	}
	done := make(chan struct{})
	n.t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	ready := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		typ := ""
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first {
				close(ready)
				first = false
			}
			switch {
			case strings.HasPrefix(line, "event: "):
				typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev := sseEvent{Type: typ}
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev)
				l.mu.Lock()
				l.evs = append(l.evs, ev)
				l.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		n.t.Fatal("event stream did not start")
	}
	return l
}

// count reports how many events of typ ("join" or "leave:<reason>") concern user/room.
func (l *sseLog) count(typ, user, room string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		t := e.Type
		if t == "leave" {
			t += ":" + e.Reason
		}
		if t == typ && e.User == user && e.Room == room {
			n++
		}
	}
	return n
}

// streamCount counts the Redis Stream entries of typ for user/room.
func streamCount(t *testing.T, c redis.UniversalClient, typ, user, room string) int {
	t.Helper()
	msgs, err := c.XRange(context.Background(), "pd:events", "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE: %v", err)
	}
	n := 0
	for _, m := range msgs {
		tt, _ := m.Values["type"].(string)
		if tt == "leave" {
			tt += ":" + fmt.Sprint(m.Values["reason"])
		}
		if tt == typ && m.Values["user"] == user && m.Values["room"] == room {
			n++
		}
	}
	return n
}

type redisSetup struct {
	name   string
	start  func(t *testing.T) (addrs string, client redis.UniversalClient)
	single bool
}

var redisSetups = []redisSetup{
	{"standalone", func(t *testing.T) (string, redis.UniversalClient) {
		r := redistest.Start(t)
		c := r.Client()
		t.Cleanup(func() { c.Close() })
		return r.Addr(), c
	}, true},
	{"cluster", func(t *testing.T) (string, redis.UniversalClient) {
		rc := redistest.StartCluster(t)
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(rc.Addrs(), ",")})
		t.Cleanup(func() { c.Close() })
		return rc.Addrs(), c
	}, false},
}

// TestClusterReplicatesAndEventsOnce: a heartbeat on A is visible on B in
// every query; join and leave reach every node's event stream exactly once
// and the Redis Stream once; a user alternating nodes never leaves; on a
// single Redis and on a three-master Redis Cluster.
func TestClusterReplicatesAndEventsOnce(t *testing.T) {
	for _, rs := range redisSetups {
		t.Run(rs.name, func(t *testing.T) {
			addrs, rc := rs.start(t)
			a := startCluster(t, clusterTestConfig(addrs))
			b := startCluster(t, clusterTestConfig(addrs))
			nodes := []*cnode{a, b}

			a.heartbeat("alice", "lobby")
			waitFor(t, 2*time.Second, "alice visible on B", func() bool {
				u := b.user("alice")
				return u.Online && len(u.Rooms) == 1 && u.Rooms[0] == "lobby" && !u.Partial
			})
			if on, partial := b.roomOnline("lobby"); on != 1 || partial {
				t.Fatalf("B room lobby online=%d partial=%v, want 1 false", on, partial)
			}
			var mem struct {
				Members []struct {
					User     string  `json:"user"`
					LastSeen *string `json:"last_seen"`
				} `json:"members"`
				Next *string `json:"next_cursor"`
			}
			b.do("GET", "/v1/rooms/lobby/members", "", &mem)
			if len(mem.Members) != 1 || mem.Members[0].User != "alice" || mem.Members[0].LastSeen == nil || mem.Next != nil {
				t.Fatalf("B members of lobby: %+v", mem)
			}
			var top struct {
				Rooms []struct {
					Room   string `json:"room"`
					Online int    `json:"online"`
				} `json:"rooms"`
			}
			b.do("GET", "/v1/rooms?top=5", "", &top)
			if len(top.Rooms) != 1 || top.Rooms[0].Room != "lobby" || top.Rooms[0].Online != 1 {
				t.Fatalf("B top rooms: %+v", top)
			}
			if st := b.stats(); st.OnlineUsers != 1 || st.Sessions != 1 || st.Rooms != 1 || st.Partial {
				t.Fatalf("B stats: %+v", st)
			}
			var status struct {
				Users []cUser `json:"users"`
			}
			b.do("POST", "/v1/status", `{"users":["alice","bob"]}`, &status)
			if len(status.Users) != 2 || !status.Users[0].Online || status.Users[1].Online {
				t.Fatalf("B status: %+v", status)
			}

			// The same user heartbeats through B too: no second join.
			b.heartbeat("alice", "lobby")
			// Alternate nodes for longer than the TTL: never a leave.
			for i := range 8 {
				nodes[i%2].heartbeat("alice", "lobby")
				time.Sleep(450 * time.Millisecond)
			}
			// Explicit leave through B: one leave everywhere.
			if c := b.do("POST", "/v1/leave", `{"user":"alice","room":"lobby"}`, nil); c != 200 {
				t.Fatalf("leave: %d", c)
			}
			for _, n := range nodes {
				waitFor(t, 2*time.Second, "leave event", func() bool { return n.ev.count("leave:left", "alice", "lobby") >= 1 })
			}
			time.Sleep(300 * time.Millisecond) // let duplicates, if any, arrive
			for i, n := range nodes {
				if j, l, to := n.ev.count("join", "alice", "lobby"), n.ev.count("leave:left", "alice", "lobby"), n.ev.count("leave:timeout", "alice", "lobby"); j != 1 || l != 1 || to != 0 {
					t.Errorf("node %d events for alice: %d joins, %d left, %d timeouts; want 1 1 0", i, j, l, to)
				}
			}
			if j, l := streamCount(t, rc, "join", "alice", "lobby"), streamCount(t, rc, "leave:left", "alice", "lobby"); j != 1 || l != 1 {
				t.Errorf("stream: %d joins, %d leaves; want 1 1", j, l)
			}
			// A's local session ended too? It still holds one until its TTL;
			// the cluster view must say offline on B at once.
			if u := b.user("alice"); u.Online && len(u.Rooms) > 0 && b.s.m.RoomOnline([]byte("lobby")) == 0 {
				t.Errorf("alice still online on B after leave: %+v", u)
			}
		})
	}
}

func (n *cnode) countAll(typ string) int {
	n.ev.mu.Lock()
	defer n.ev.mu.Unlock()
	c := 0
	for _, e := range n.ev.evs {
		t := e.Type
		if t == "leave" {
			t += ":" + e.Reason
		}
		if t == typ {
			c++
		}
	}
	return c
}

// TestClusterNoGhosts: a node dies; its user who keeps heartbeating through
// another node stays online with no leave, and its user who stops is
// expired by the survivors within TTL + 1 s with one timeout leave on each.
func TestClusterNoGhosts(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	c := startCluster(t, clusterTestConfig(r.Addr()))
	ttl := a.s.cfg.TTL

	// Several heartbeats each, so A holds deferred refreshes when it dies.
	for range 3 {
		a.heartbeat("stays", "room")
		a.heartbeat("stops", "room")
		time.Sleep(300 * time.Millisecond)
	}
	lastStops := time.Now()
	waitFor(t, 2*time.Second, "both visible on C", func() bool {
		on, _ := c.roomOnline("room")
		return on == 2
	})
	a.kill()

	// "stays" moves to B and keeps heartbeating at the interval.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for {
			b.heartbeat("stays", "room")
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()

	deadline := lastStops.Add(ttl + time.Second)
	for _, n := range []*cnode{b, c} {
		waitFor(t, time.Until(deadline)+50*time.Millisecond, "timeout leave of stops", func() bool {
			return n.ev.count("leave:timeout", "stops", "room") == 1
		})
	}
	if time.Now().After(deadline) {
		t.Fatalf("expired %s after the last heartbeat, want within %s", time.Since(lastStops), ttl+time.Second)
	}
	// Stay past another TTL: "stays" is never left, "stops" never twice.
	time.Sleep(ttl)
	for i, n := range []*cnode{b, c} {
		if u := n.user("stops"); u.Online || u.Partial {
			t.Errorf("node %d: ghost %+v", i, u)
		}
		if u := n.user("stays"); !u.Online || u.Partial {
			t.Errorf("node %d: stays is offline: %+v", i, u)
		}
		if got := n.ev.count("leave:timeout", "stops", "room"); got != 1 {
			t.Errorf("node %d: %d timeout leaves for stops, want 1", i, got)
		}
		if got := n.countAll("leave:timeout") + n.countAll("leave:left"); got != 1 {
			t.Errorf("node %d: %d leaves in all, want 1 (stays must not leave)", i, got)
		}
		if got := n.ev.count("join", "stays", "room"); got != 1 {
			t.Errorf("node %d: %d joins of stays, want 1 (the first, through A)", i, got)
		}
		if on, _ := n.roomOnline("room"); on != 1 {
			t.Errorf("node %d: room online %d, want 1", i, on)
		}
	}
}

// metricValue reads one sample of GET /metrics.
func (n *cnode) metricValue(sample string) float64 {
	n.t.Helper()
	resp, err := testHTTP.Get(n.base + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	n.t.Fatalf("metric %s not found", sample)
	return 0
}

// TestClusterRedisOutage: with Redis down, heartbeats are still accepted,
// answers come from the node with "partial": true and the metrics say so;
// when Redis comes back empty, 100,000 sessions converge within 5 s.
func TestClusterRedisOutage(t *testing.T) {
	r := redistest.Start(t)
	cfg := clusterTestConfig(r.Addr())
	cfg.TTL, cfg.Interval = time.Minute, 20*time.Second
	a := startCluster(t, cfg)
	b := startCluster(t, cfg)

	const sessions = 100_000
	now := time.Now().UnixMilli()
	for i := range sessions {
		if _, err := a.s.m.Touch(fmt.Appendf(nil, "user-%d", i), fmt.Appendf(nil, "room-%d", i%100), now, cfg.TTL.Milliseconds()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "100k sessions on B", func() bool { return b.stats().Sessions == sessions })

	r.Stop()
	waitFor(t, 3*time.Second, "redis down on A", func() bool { return a.metricValue("presenced_redis_up") == 0 })
	t0 := time.Now()
	for i := range 20 {
		a.heartbeat(fmt.Sprintf("outage-%d", i), "room-x")
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("20 heartbeats took %s with Redis down", d)
	}
	if u := a.user("outage-3"); !u.Online || !u.Partial {
		t.Errorf("A user during outage: %+v, want online and partial", u)
	}
	if st := a.stats(); !st.Partial || st.Sessions != sessions+20 {
		t.Errorf("A stats during outage: %+v", st)
	}
	if on, partial := a.roomOnline("room-x"); on != 20 || !partial {
		t.Errorf("A room during outage: %d %v", on, partial)
	}
	if a.metricValue("presenced_redis_errors_total") == 0 {
		t.Error("presenced_redis_errors_total is 0 during an outage")
	}

	r.Restart() // empty: no persistence
	restarted := time.Now()
	waitFor(t, 5*time.Second, "cluster view to converge after Redis came back empty", func() bool {
		st := b.stats()
		return !st.Partial && st.Sessions == sessions+20
	})
	t.Logf("converged %d sessions in %s after the restart", sessions+20, time.Since(restarted))
	if u := b.user("outage-3"); !u.Online || u.Partial {
		t.Errorf("B after recovery: %+v", u)
	}
	if a.metricValue("presenced_redis_up") != 1 {
		t.Error("presenced_redis_up is not 1 after recovery")
	}
}
