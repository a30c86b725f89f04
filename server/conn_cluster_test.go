package server_test

import (
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/redistest"
)

// Two nodes on one Redis: alice has one connection through each. Node A
// dies (its writer and reaper stop as in a crash): her connection there is
// gone with it, and she stays present, with no leave anywhere, while her
// connection through B heartbeats; when that stops too, one timeout leave.
func TestClusterConnsNodeDies(t *testing.T) {
	r := redistest.Start(t)
	a := startCluster(t, clusterTestConfig(r.Addr()))
	b := startCluster(t, clusterTestConfig(r.Addr()))
	ttl := a.Cfg.TTL
	hb := func(n *cnode, conn string) {
		t.Helper()
		if c := n.Do("POST", "/v1/heartbeat", `{"user":"alice","room":"doc","conn":"`+conn+`"}`, nil); c != 200 {
			t.Fatalf("heartbeat through %s: %d", conn, c)
		}
	}
	hb(a, "phone")
	hb(b, "laptop")
	testkit.Eventually(t, 10*time.Second, "alice's join on B", func() bool { return b.ev.Count("join", "alice", "doc") == 1 })
	a.kill()

	// The laptop goes on through B for two TTLs: alice never leaves.
	end := time.Now().Add(2 * ttl)
	for time.Now().Before(end) {
		hb(b, "laptop")
		time.Sleep(ttl / 5)
	}
	b.Heartbeat("marker", "marker-room")
	testkit.Eventually(t, 10*time.Second, "the marker's join", func() bool { return b.ev.Count("join", "marker", "marker-room") == 1 })
	if n := b.ev.Count("leave", "alice", "doc") + b.ev.Count("leave:timeout", "alice", "doc"); n != 0 {
		t.Fatalf("alice left %d times while her laptop heartbeated through B", n)
	}
	if on, _ := b.RoomOnline("doc"); on != 1 || !b.User("alice").Online {
		t.Fatalf("alice not present on B after A died: online %d", on)
	}
	// The laptop stops: one timeout leave.
	testkit.Eventually(t, ttl+10*time.Second, "alice's timeout", func() bool { return b.ev.Count("leave:timeout", "alice", "doc") == 1 })
	if b.ev.Count("join", "alice", "doc") != 1 {
		t.Fatalf("alice joined %d times, want once", b.ev.Count("join", "alice", "doc"))
	}
}
