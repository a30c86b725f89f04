package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/redistest"
)

// waitMembers waits for n member events on l and returns them.
func waitMembers(t *testing.T, l *servertest.Events, n int, what string) []servertest.Event {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, what, func() bool { return len(l.Members()) >= n })
	return l.Members()
}

// Every node streams the same events with the same ids; a client can
// resume on another node, including one started after the events (its
// history then comes from the Redis Stream), and gets each event once.
func TestClusterEventsResumeAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	for i := range 10 {
		n := a
		if i%2 == 1 {
			n = b
		}
		n.Heartbeat(fmt.Sprintf("u%d", i), "room")
	}
	evA := waitMembers(t, a.ev, 10, "10 joins on A")
	evB := waitMembers(t, b.ev, 10, "10 joins on B")
	for i := range 10 {
		if evA[i].ID == "" || evA[i].ID != evB[i].ID || evA[i].User != evB[i].User {
			t.Fatalf("event %d: A %+v, B %+v: nodes disagree", i, evA[i], evB[i])
		}
	}
	c := startCluster(t, clusterTestConfig(r.Addr())) // after the events: history from Redis
	for i, n := range []*cnode{b, c} {
		l := n.EventsFrom(evA[4].ID)
		// A marker after the history: once it arrives, a duplicate of the
		// resumed events would have arrived before it.
		marker := fmt.Sprintf("marker%d", i)
		a.Heartbeat(marker, "other")
		testkit.Eventually(t, 10*time.Second, "marker", func() bool { return l.Count("join", marker, "other") == 1 })
		got := l.Members()
		if len(got) < 6 || got[len(got)-1].User != marker {
			t.Fatalf("resumed %+v, want 5 events then the marker", got)
		}
		got = got[:len(got)-1-i] // the earlier node's marker came before ours
		if len(got) != 5 {
			t.Fatalf("resumed %d events, want 5: %+v", len(got), got)
		}
		for j, ev := range got {
			if ev.ID != evA[5+j].ID || ev.User != evA[5+j].User {
				t.Fatalf("resumed event %d = %+v, want %+v", j, ev, evA[5+j])
			}
		}
	}
	a.Heartbeat("live", "room")
	testkit.Eventually(t, 5*time.Second, "live join on C", func() bool { return c.ev.Count("join", "live", "room") == 1 })
}

// A leave through A followed within --leave-delay by a rejoin through B is
// no event on any node; a leave with no rejoin arrives once, the delay late.
func TestClusterEventsDebounceAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	cfg := clusterTestConfig(r.Addr())
	cfg.LeaveDelay = 600 * time.Millisecond
	a := startCluster(t, cfg)
	b := startCluster(t, cfg)
	a.Heartbeat("u", "room")
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "join", func() bool { return n.ev.Count("join", "u", "room") == 1 })
	}
	// Held leaves are a hash in Redis ({pd:events}:lp, user "\0" room; see
	// server/internal/cluster/events.go): a rejoin deletes the entry, a due leave is
	// moved from it to the stream in the same script.
	rc := r.Client()
	defer rc.Close()
	heldKey := "{" + a.Srv.ClusterForTest().StreamKey() + "}:lp"
	held := func() bool {
		ok, err := rc.HExists(context.Background(), heldKey, "u\x00room").Result()
		if err != nil {
			t.Fatalf("HEXISTS %s: %v", heldKey, err)
		}
		return ok
	}
	a.Do("POST", "/v1/leave", `{"user":"u","room":"room"}`, nil)
	// The leave is decided in Redis: the session is gone from the cluster
	// view and its leave is held (EMIT may run before the session's removal).
	testkit.Eventually(t, 5*time.Second, "the leave decided in Redis", func() bool { return held() && !b.User("u").Online })
	b.Heartbeat("u", "room") // the reload lands on another node
	// Cancelled by the rejoin, or (wrongly) emitted when due: either way
	// the entry goes, and an emitted leave is in the stream before the marker.
	testkit.Eventually(t, 5*time.Second, "the held leave gone", func() bool { return !held() })
	a.Heartbeat("marker", "room")
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "marker", func() bool { return n.ev.Count("join", "marker", "room") == 1 })
	}
	for i, n := range []*cnode{a, b} {
		if got := n.ev.Count("leave:left", "u", "room") + n.ev.Count("join", "u", "room"); got != 1 {
			t.Fatalf("node %d: %d events of u, want only the first join: %+v", i, got, n.ev.Snapshot())
		}
	}
	t0 := time.Now()
	b.Do("POST", "/v1/leave", `{"user":"u","room":"room"}`, nil)
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "held leave", func() bool { return n.ev.Count("leave:left", "u", "room") == 1 })
	}
	if d := time.Since(t0); d < cfg.LeaveDelay {
		t.Fatalf("leave after %s, before the %s delay", d, cfg.LeaveDelay)
	}
}

// Redis stops while streams are open: a user who joins during the outage
// is announced once Redis is back, with the time of the join; nothing twice.
func TestClusterEventsRedisRestart(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	a.Heartbeat("before", "room")
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "join before", func() bool { return n.ev.Count("join", "before", "room") == 1 })
	}
	r.Stop()
	testkit.Eventually(t, 5*time.Second, "redis down on A", func() bool { return a.Metric("presenced_redis_up") == 0 })
	joinedAt := time.Now()
	a.Heartbeat("during", "room")
	time.Sleep(300 * time.Millisecond) // lets A's writer try the join during the outage (not a proof of anything)
	r.Restart()
	for i, n := range []*cnode{a, b} {
		testkit.Eventually(t, 15*time.Second, "join of the outage user", func() bool { return n.ev.Count("join", "during", "room") == 1 })
		for _, ev := range n.ev.Snapshot() {
			if ev.User == "during" {
				at, err := time.Parse(time.RFC3339, ev.At)
				if err != nil || at.Sub(joinedAt).Abs() > time.Second {
					t.Errorf("node %d: join of during at %q, want its original time %s", i, ev.At, joinedAt.UTC())
				}
			}
		}
	}
	a.Heartbeat("after", "room")
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "join after", func() bool { return n.ev.Count("join", "after", "room") == 1 })
	}
	for i, n := range []*cnode{a, b} {
		for _, u := range []string{"before", "during", "after"} {
			if c := n.ev.Count("join", u, "room"); c != 1 {
				t.Errorf("node %d: %d joins of %s, want 1", i, c, u)
			}
		}
	}
}

// The first member's join through A is preceded by occupied on every node;
// the last member's leave through B is followed by vacated.
func TestClusterEventsOccupiedVacated(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	a.Heartbeat("u1", "z")
	a.Heartbeat("u2", "z")
	// A leave through B can overtake a join still on its way through A
	// (two writers, one Redis): it would find nothing to end, and the join
	// would come after it. Leave once the joins are in.
	testkit.Eventually(t, 10*time.Second, "both joins on B", func() bool {
		return b.ev.Count("join", "u1", "z") == 1 && b.ev.Count("join", "u2", "z") == 1
	})
	b.Do("POST", "/v1/leave", `{"user":"u1","room":"z"}`, nil)
	b.Do("POST", "/v1/leave", `{"user":"u2","room":"z"}`, nil)
	for i, n := range []*cnode{a, b} {
		testkit.Eventually(t, 10*time.Second, "vacated", func() bool { return n.ev.Count("vacated", "", "z") == 1 })
		var got []string
		for _, ev := range n.ev.Snapshot() {
			if ev.Room == "z" {
				got = append(got, ev.Type+" "+ev.User)
			}
		}
		// One writer round may carry both joins in either order.
		if len(got) != 6 || got[0] != "occupied " || got[5] != "vacated " ||
			!strings.HasPrefix(got[1], "join") || !strings.HasPrefix(got[2], "join") ||
			!strings.HasPrefix(got[3], "leave") || !strings.HasPrefix(got[4], "leave") {
			t.Fatalf("node %d: %v, want occupied, two joins, two leaves, vacated", i, got)
		}
	}
}

// With the debounce on, the held leave and the vacated room it caused reach
// every stream in that order, as on a single node.
func TestClusterEventsVacatedAfterLeave(t *testing.T) {
	r := redistest.Start(t)
	cfg := clusterTestConfig(r.Addr())
	cfg.LeaveDelay = 300 * time.Millisecond
	a := startCluster(t, cfg)
	b := startCluster(t, cfg)
	a.Heartbeat("solo", "v")
	testkit.Eventually(t, 10*time.Second, "the join on B", func() bool { return b.ev.Count("join", "solo", "v") == 1 })
	a.Do("POST", "/v1/leave", `{"user":"solo","room":"v"}`, nil)
	for i, n := range []*cnode{a, b} {
		testkit.Eventually(t, 10*time.Second, "vacated", func() bool { return n.ev.Count("vacated", "", "v") == 1 })
		var got []string
		for _, ev := range n.ev.Snapshot() {
			if ev.Room == "v" {
				got = append(got, ev.Type)
			}
		}
		if strings.Join(got, ",") != "occupied,join,leave,vacated" {
			t.Fatalf("node %d: %v, want occupied, join, leave, vacated", i, got)
		}
	}
}

// State set through A is in B's answers and in the join every node
// streams; a change through A is one update on every node; a refresh
// without state keeps it.
func TestClusterState(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	post := func(body string) {
		t.Helper()
		if c := a.Do("POST", "/v1/heartbeat", body, nil); c != 200 {
			t.Fatalf("heartbeat %s: %d", body, c)
		}
	}
	post(`{"user":"s","room":"r","state":{"status":"away"}}`)
	memberState := func() string {
		var out struct {
			Members []struct {
				User  string          `json:"user"`
				State json.RawMessage `json:"state"`
			} `json:"members"`
			Partial bool `json:"partial"`
		}
		b.Do("GET", "/v1/rooms/r/members", "", &out)
		if len(out.Members) != 1 || out.Partial {
			return fmt.Sprintf("%+v", out)
		}
		return string(out.Members[0].State)
	}
	testkit.Eventually(t, 5*time.Second, "state on B", func() bool { return memberState() == `{"status":"away"}` })
	var u struct {
		Sessions []struct {
			Room  string          `json:"room"`
			State json.RawMessage `json:"state"`
		} `json:"sessions"`
	}
	b.Do("GET", "/v1/users/s", "", &u)
	if len(u.Sessions) != 1 || string(u.Sessions[0].State) != `{"status":"away"}` {
		t.Fatalf("B's user status: %+v", u)
	}
	post(`{"user":"s","room":"r"}`) // keeps it
	post(`{"user":"s","room":"r","state":{"status":"online"}}`)
	for i, n := range []*cnode{a, b} {
		testkit.Eventually(t, 5*time.Second, "update", func() bool { return n.ev.Count("update", "s", "r") == 1 })
		for _, ev := range n.ev.Members() {
			want := map[string]string{"join": `{"status":"away"}`, "update": `{"status":"online"}`}[ev.Type]
			if string(ev.State) != want {
				t.Fatalf("node %d: %s carries %s, want %s", i, ev.Type, ev.State, want)
			}
		}
		if c := n.ev.Count("join", "s", "r"); c != 1 {
			t.Fatalf("node %d: %d joins", i, c)
		}
	}
	testkit.Eventually(t, 5*time.Second, "new state on B", func() bool { return memberState() == `{"status":"online"}` })
}

// A Last-Event-ID beyond anything the event stream holds (another
// history, or garbage) gets a reset and then live events, as on a single
// node, instead of a stream that stays silent until that id's time.
func TestClusterEventsFutureLastEventID(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	a.Heartbeat("first", "room")
	waitMembers(t, a.ev, 1, "first join")
	future := fmt.Sprintf("%d-0", time.Now().Add(time.Hour).UnixMilli())
	for _, id := range []string{future, "99999999999999-0"} {
		l := a.EventsFrom(id)
		testkit.Eventually(t, 5*time.Second, "reset for "+id, func() bool { return l.CountAll("reset") == 1 })
		user := "live-" + id
		a.Heartbeat(user, "room")
		testkit.Eventually(t, 5*time.Second, "live join after "+id, func() bool { return l.Count("join", user, "room") == 1 })
	}
	// The same as a WebSocket since.
	w := dialWS(t, a.Node, "", nil)
	w.mustOK(map[string]any{"op": "subscribe", "ref": 1, "since": "99999999999999-0"})
	if m := w.next(5 * time.Second); m["type"] != "reset" {
		t.Fatalf("ws since in the future: %v, want a reset", m)
	}
	a.Heartbeat("ws-live", "room")
	wantEvent(t, w.next(5*time.Second), "join ws-live room")
}
