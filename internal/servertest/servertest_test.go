package servertest_test

import (
	"testing"
	"time"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/wire"
)

// The harness talks to a real node over HTTP, UDP, /metrics and the event
// stream, and sees what each transport did.
func TestHarnessTalksToARealNode(t *testing.T) {
	n := servertest.Start(t, func(c *server.Config) { c.LeaveDelay = 0 })
	ev := n.Events()
	n.Heartbeat("alice", "lobby")
	uc := n.UDPClient()
	reply := uc.Send(uc.Request(1, true, wire.Item{Op: wire.OpHeartbeat, User: []byte("bob"), Room: []byte("lobby")}), 2*time.Second)
	var r wire.Reply
	if err := r.Decode(reply); err != nil || len(r.Statuses()) != 1 || r.Statuses()[0] != wire.StatusOK {
		t.Fatalf("UDP reply %x: %v %v", reply, r.Statuses(), err)
	}
	if u := n.User("alice"); !u.Online || len(u.Rooms) != 1 || u.Rooms[0] != "lobby" {
		t.Fatalf("alice: %+v", u)
	}
	if on, partial := n.RoomOnline("lobby"); on != 2 || partial {
		t.Fatalf("lobby online %d partial %v, want 2 false", on, partial)
	}
	if st := n.Stats(); st.Sessions != 2 || st.OnlineUsers != 2 || st.Rooms != 1 {
		t.Fatalf("stats %+v", st)
	}
	if v := n.Metric(`presenced_heartbeats_total{outcome="ok",transport="udp"}`); v != 1 {
		t.Fatalf("udp ok heartbeats %v, want 1", v)
	}
	if c := n.Do("POST", "/v1/leave", `{"user":"alice","room":"lobby"}`, nil); c != 200 {
		t.Fatalf("leave: %d", c)
	}
	testkit.Eventually(t, 5*time.Second, "alice's leave on the stream", func() bool { return ev.Count("leave:left", "alice", "lobby") == 1 })
	if j := ev.Count("join", "alice", "lobby") + ev.Count("join", "bob", "lobby"); j != 2 || ev.CountAll("join") != 2 {
		t.Fatalf("events %+v, want two joins", ev.Snapshot())
	}
}

// failT records a Fatalf and stops the call with a panic the test recovers.
type failT struct {
	testing.TB
	failed bool
}

func (f *failT) Helper() {}
func (f *failT) Fatalf(string, ...any) {
	f.failed = true
	panic(f)
}

// A sample /metrics does not have fails the test rather than reading as a
// value an assertion could take for "not counted".
func TestMetricMissingFails(t *testing.T) {
	n := servertest.Start(t, nil)
	ft := &failT{TB: t}
	n.T = ft
	func() {
		defer func() { _ = recover() }()
		n.Metric("presenced_no_such_metric")
	}()
	n.T = t
	if !ft.failed {
		t.Fatal("Metric of a missing sample did not fail")
	}
}
