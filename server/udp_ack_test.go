package server

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/presenced/presenced/server/wire"
)

// poisonConn is a UDP gnet.Conn that fails the test if used after the
// callback it was given to has returned.
type poisonConn struct {
	gnet.Conn
	t        *testing.T
	returned bool
}

func (c *poisonConn) check() {
	if c.returned {
		c.t.Error("gnet.Conn used after OnTraffic returned")
	}
}
func (c *poisonConn) RemoteAddr() net.Addr { c.check(); return fakeAddr }
func (c *poisonConn) Fd() int              { c.check(); return 42 }

// The --fsync=always ack queue keeps no gnet.Conn, holds at most its limit
// while the log is not synced, and once closed (before gnet closes its
// sockets) sends nothing more, even with a sync still pending.
func TestAckQueueBoundedAndClosedBeforeSockets(t *testing.T) {
	r := newRegistry(slog.New(slog.DiscardHandler))
	sent := r.counter("sent", "")
	dropped := r.counterVec("dropped", "", "reason", ackDropLabels...)
	waiting, release := make(chan struct{}, 16), make(chan error)
	wait := func(ctx context.Context) error {
		waiting <- struct{}{}
		select {
		case err := <-release:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	q := newAckQueue(4, wait, sent, dropped)
	var mu sync.Mutex
	var sends []string
	q.send = func(fd int, to unix.Sockaddr, b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if fd != 42 {
			t.Errorf("sendto fd %d", fd)
		}
		sends = append(sends, string(b))
		return nil
	}
	go q.loop()
	add := func(b string) {
		c := &poisonConn{t: t}
		q.add(c, []byte(b))
		c.returned = true // the conn is gone once the callback returns
	}
	add("first")
	<-waiting // the loop waits for the first sync with "first" in hand
	for range 10 {
		add("more")
	}
	if n := q.pendingLen(); n != 4 {
		t.Fatalf("%d acks wait behind a slow sync, want the limit of 4", n)
	}
	if n := dropped[ackQueueFull].Load(); n != 6 {
		t.Fatalf("queue_full drops = %d, want 6", n)
	}
	release <- nil // the sync completes: "first" is sent
	<-waiting      // and the loop waits again, for the 4 "more"
	mu.Lock()
	if len(sends) != 1 || sends[0] != "first" {
		t.Fatalf("sends %q, want [first]", sends)
	}
	mu.Unlock()
	// Close while that sync is pending: it returns at once, and the acks
	// that were not made durable are dropped, not sent.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := q.close(ctx); err != nil {
		t.Fatalf("close with a sync pending: %v", err)
	}
	add("late")
	mu.Lock()
	defer mu.Unlock()
	if len(sends) != 1 || sent.Load() != 1 {
		t.Fatalf("sends after close: %q", sends)
	}
	if n := dropped[ackShutdown].Load(); n != 5 {
		t.Fatalf("shutdown drops = %d, want 5 (4 pending, 1 late)", n)
	}
}

// BenchmarkUDPHeartbeatV2 is BenchmarkUDPHeartbeat with signed v2 datagrams:
// the extra cost is the client-key derivation, the datagram's MAC and the
// replay check. Every datagram is fresh (a later timestamp for its token).
func BenchmarkUDPHeartbeatV2(b *testing.B) {
	s, kr := newTestServer(b)
	u := &udpServer{s: s}
	const users = 1000
	toks, keys := make([][]byte, users), make([][]byte, users)
	for i := range users {
		tok, _ := kr.Mint("", "user-"+strconv.Itoa(i), "", false, time.Now().Add(time.Hour))
		k, _ := kr.ClientKey([]byte(tok))
		toks[i], keys[i] = []byte(tok), k[:]
	}
	ts := uint64(time.Now().UnixMilli())
	dgs := make([][]byte, b.N)
	for i := range dgs {
		n := i % users
		dgs[i], _ = wire.AppendRequestV2(nil, uint32(i), true, ts+uint64(i/users), toks[n], keys[n],
			[]wire.Item{{Op: wire.OpHeartbeat, User: []byte("user-" + strconv.Itoa(n)), Room: []byte("room-" + strconv.Itoa(n%100))}})
	}
	c := &fakeConn{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range dgs {
		c.in = dgs[i]
		u.OnTraffic(c)
	}
	b.StopTimer()
	if c.replies != len(dgs) {
		b.Fatalf("%d replies to %d datagrams", c.replies, len(dgs))
	}
}

// TestUDPV2PathAllocs: verifying a v2 datagram (client key, MAC, replay
// check) adds no allocation to the heartbeat path.
func TestUDPV2PathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; .ci/test.sh runs this test without -race")
	}
	s, kr := newTestServer(t)
	u := &udpServer{s: s}
	tok, _ := kr.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	key, _ := kr.ClientKey([]byte(tok))
	ts := uint64(time.Now().UnixMilli())
	const runs = 200
	dgs := make([][]byte, runs+2)
	for i := range dgs {
		dgs[i], _ = wire.AppendRequestV2(nil, uint32(i), true, ts+uint64(i), []byte(tok), key[:], []wire.Item{{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("r")}})
	}
	c := &fakeConn{in: dgs[0]}
	u.OnTraffic(c) // the join may allocate
	i := 1
	allocs := testing.AllocsPerRun(runs, func() {
		c.in = dgs[i]
		i++
		u.OnTraffic(c)
	})
	if c.replies != i || allocs != 0 {
		t.Fatalf("%d replies to %d datagrams; %v allocations per v2 datagram, want 0", c.replies, i, allocs)
	}
}
