package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/redistest"
)

// In a cluster, a socket closing on A is one disconnect leave on every
// node (through the Redis writer's leave op and the event stream), and the
// session is gone from the cluster view.
func TestClusterWSDisconnect(t *testing.T) {
	r := redistest.Start(t)
	cfg := clusterTestConfig(r.Addr())
	cfg.LeaveDelay = 0
	a := startCluster(t, cfg)
	b := startCluster(t, cfg)
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(a.Base, "http")+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"op":"heartbeat","ref":1,"user":"u","room":"room"}`)); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || !strings.Contains(string(msg), `"ok":true`) {
		t.Fatalf("heartbeat answer %s, %v", msg, err)
	}
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 10*time.Second, "join", func() bool { return n.ev.Count("join", "u", "room") == 1 })
	}
	c.Close()
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 10*time.Second, "disconnect leave", func() bool { return n.ev.Count("leave:disconnect", "u", "room") == 1 })
	}
	// Both leave writes (the local one and the cluster-wide one) are in
	// Redis before a later marker's join; only one may have emitted.
	a.Heartbeat("marker", "room")
	for _, n := range []*cnode{a, b} {
		testkit.Eventually(t, 10*time.Second, "marker join", func() bool { return n.ev.Count("join", "marker", "room") == 1 })
		if n.ev.Count("leave:disconnect", "u", "room") != 1 {
			t.Fatalf("disconnect leaves: %+v", n.ev.Snapshot())
		}
		if n.ev.Count("leave:left", "u", "room")+n.ev.Count("leave:timeout", "u", "room") != 0 {
			t.Fatalf("a second leave after the disconnect: %+v", n.ev.Snapshot())
		}
	}
}
