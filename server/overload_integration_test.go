package server_test

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/wire"
)

// Every transport that replies tells clients to slow down while the node
// sheds: the HTTP heartbeat answer (POST and GET), the batch answer, the
// WebSocket heartbeat answer and the UDP ack carry interval_ms and ttl_ms
// times --overload-backoff; the metrics say so.
func TestSheddingTellsClientsToSlowDown(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.OverloadCooldown = time.Hour // the monitor's own checks do not end it
	})
	type timing struct {
		Interval int64 `json:"interval_ms"`
		TTL      int64 `json:"ttl_ms"`
	}
	ws := dialWS(t, n, "", nil)
	u := n.UDPClient()
	seq := uint32(0)
	check := func(wantIv, wantTTL int64) {
		t.Helper()
		var ans, batch timing
		if code := n.Do("POST", "/v1/heartbeat", `{"user":"a","room":"r"}`, &ans); code != 200 || ans != (timing{wantIv, wantTTL}) {
			t.Fatalf("POST /v1/heartbeat: %d %+v, want %d/%d", code, ans, wantIv, wantTTL)
		}
		ans = timing{}
		if code := n.Do("GET", "/v1/heartbeat?user=a&room=r", "", &ans); code != 200 || ans != (timing{wantIv, wantTTL}) {
			t.Fatalf("GET /v1/heartbeat: %d %+v", code, ans)
		}
		if code := n.Do("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"b","room":"r"}]}`, &batch); code != 200 || batch != (timing{wantIv, wantTTL}) {
			t.Fatalf("POST /v1/heartbeats: %d %+v", code, batch)
		}
		m := ws.mustOK(map[string]any{"op": "heartbeat", "user": "c", "room": "r"})
		if m["interval_ms"] != float64(wantIv) || m["ttl_ms"] != float64(wantTTL) {
			t.Fatalf("WebSocket heartbeat answer %v", m)
		}
		seq++
		rep := u.Send(u.Request(seq, true, hb("d-long-enough-for-the-ack-to-carry-timing", "r", "")), 5*time.Second)
		var r wire.Reply
		if err := r.Decode(rep); err != nil || !r.HasTiming || int64(r.IntervalMs) != wantIv || int64(r.TTLMs) != wantTTL {
			t.Fatalf("UDP ack %x: %v, timing %v %d/%d", rep, err, r.HasTiming, r.IntervalMs, r.TTLMs)
		}
	}
	check(60_000, 150_000)
	if v := n.Metric("presenced_overload_shedding"); v != 0 {
		t.Fatalf("shedding = %v before any overload", v)
	}
	n.Srv.ShedForTest()
	check(120_000, 300_000)
	if v := n.Metric("presenced_overload_shedding"); v != 1 {
		t.Fatalf("presenced_overload_shedding = %v while shedding", v)
	}
	if v := n.Metric("presenced_overload_transitions_total"); v != 1 {
		t.Fatalf("transitions = %v, want 1", v)
	}
	if v := n.Metric("presenced_overload_timeouts_held"); v != 1 {
		t.Fatalf("timeouts_held = %v while shedding", v)
	}
}

// A node whose UDP socket cannot keep up (a receive buffer of the kernel's
// minimum, flooded from two sockets) sees the kernel drop datagrams: the
// metric counts exactly what /proc/net/udp shows for its port, and the
// node starts shedding on its own.
func TestKernelDropsVisibleAndShed(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.UDPLoops = 1
		c.UDPReadBuffer = 1
		c.SourceRate = 0
		c.OverloadCooldown = time.Hour
	})
	_, portStr, _ := net.SplitHostPort(n.UDP)
	port, _ := strconv.Atoi(portStr)
	if v := n.Metric("presenced_udp_kernel_drops_total"); v != 0 {
		t.Fatalf("kernel drops = %v before any traffic", v)
	}
	var items []wire.Item
	for i := range 64 {
		items = append(items, hb(fmt.Sprintf("user-%02d", i), "room", ""))
	}
	dg, err := wire.AppendRequest(nil, 1, false, items)
	if err != nil {
		t.Fatal(err)
	}
	senders := []*net.UDPConn{}
	for range 2 {
		c, err := net.Dial("udp", n.UDP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		senders = append(senders, c.(*net.UDPConn))
	}
	flood := func() {
		done := make(chan struct{})
		for _, c := range senders {
			go func() {
				defer func() { done <- struct{}{} }()
				for range 2000 {
					_, _ = c.Write(dg)
				}
			}()
		}
		for range senders {
			<-done
		}
	}
	testkit.Eventually(t, 20*time.Second, "the node to shed under kernel drops", func() bool {
		flood()
		return n.Metric("presenced_overload_shedding") == 1
	})
	got, want := n.Metric("presenced_udp_kernel_drops_total"), testkit.UDPPortDrops(t, port)
	if want == 0 || uint64(got) != want {
		t.Fatalf("presenced_udp_kernel_drops_total = %v, /proc/net/udp drops at port %d = %d", got, port, want)
	}
}
