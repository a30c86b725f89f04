package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/presenced/presenced/server/internal/redistest"
	"github.com/presenced/presenced/shardmap"
)

// clockWriter is a node whose writer runs only when the test calls cycle,
// on a clock the test moves: no goroutines, no wall time.
type clockWriter struct {
	n   *Node
	now int64
}

func newClockWriter(t *testing.T, addr string) *clockWriter {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addrs, cfg.NodeID = addr, "clock"
	cfg.TTL, cfg.RefreshMargin = 10*time.Second, 2*time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := New(cfg, func(func(user, room, state []byte, lastSeen, expiry int64) bool) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, slots, err := cfg.newClient()
	if err != nil {
		t.Fatal(err)
	}
	n.c, n.slots = c, slots
	t.Cleanup(func() { c.Close() })
	cw := &clockWriter{n: n, now: 1_800_000_000_000}
	n.w.now = func() int64 { return cw.now }
	n.w.init(n)
	n.needAssert.Store(false) // the store is empty: nothing to re-assert
	n.up.Store(true)
	return cw
}

// touch offers one heartbeat at the test's clock, as the table's drain would.
func (cw *clockWriter) touch(user, room string) {
	cw.n.Offer(&shardmap.Change{User: []byte(user), Room: []byte(room), LastSeen: cw.now, Expiry: cw.now + cw.n.ttlMs})
}

// stored reads the expiry Redis holds for (user, room), 0 when none.
func (cw *clockWriter) stored(t *testing.T, user, room string) int64 {
	t.Helper()
	v, err := cw.n.c.HGet(context.Background(), cw.n.k.user(user), room).Result()
	if err != nil {
		return 0
	}
	exp, _, ok := splitValue(v)
	if !ok {
		t.Fatalf("bad value %q", v)
	}
	return exp
}

// The writer's deferred refreshes, driven by an injected clock: a join is
// written at once, refreshes only when the written expiry comes within the
// margin (then with the latest), the ring keeps working after the clock
// passes more slots than it has (wrap), and a final cycle (Close) writes
// every deferred refresh at once.
func TestWriterDeferredRefreshesInjectedClock(t *testing.T) {
	r := redistest.Start(t)
	cw := newClockWriter(t, r.Addr())
	w := &cw.n.w
	t0 := cw.now
	cw.touch("u", "r")
	w.cycle(false)
	if got := cw.stored(t, "u", "r"); got != t0+10_000 {
		t.Fatalf("join: stored expiry %d, want %d (written at once)", got, t0+10_000)
	}
	// A refresh 1 s later is deferred: Redis keeps the first expiry.
	cw.now += 1000
	cw.touch("u", "r")
	w.cycle(false)
	if got := cw.stored(t, "u", "r"); got != t0+10_000 {
		t.Fatalf("refresh written early: %d", got)
	}
	// Another refresh at +5 s, still deferred; at +8.5 s (within the 2 s
	// margin of the written expiry, past its slot) the latest is written.
	cw.now = t0 + 5000
	cw.touch("u", "r")
	w.cycle(false)
	if got := cw.stored(t, "u", "r"); got != t0+10_000 {
		t.Fatalf("refresh written before the margin: %d", got)
	}
	cw.now = t0 + 8500
	w.cycle(false)
	if got := cw.stored(t, "u", "r"); got != t0+15_000 {
		t.Fatalf("at the margin: stored %d, want the latest expiry %d", got, t0+15_000)
	}
	// Ring wrap: sessions refreshed, then the clock jumps past more slots
	// than the ring holds; their refreshes still land (late, but once).
	slots := int64(len(w.ring)) * w.slotMs
	for i := range 5 {
		cw.touch(fmt.Sprint("w", i), "r")
	}
	w.cycle(false)
	cw.now += 1000
	for i := range 5 {
		cw.touch(fmt.Sprint("w", i), "r")
	}
	w.cycle(false)
	cw.now += 3 * slots
	w.cycle(false)
	for i := range 5 {
		if got := cw.stored(t, fmt.Sprint("w", i), "r"); got != cw.now-3*slots+10_000 {
			t.Fatalf("after the wrap: w%d stored %d, want %d", i, got, cw.now-3*slots+10_000)
		}
	}
	// A refresh deferred at Close is written by the final cycle.
	cw.touch("c", "r")
	w.cycle(false)
	cw.now += 1000
	cw.touch("c", "r")
	w.cycle(false)
	if got := cw.stored(t, "c", "r"); got != cw.now-1000+10_000 {
		t.Fatalf("refresh of c written early: %d", got)
	}
	w.cycle(true)
	if got := cw.stored(t, "c", "r"); got != cw.now+10_000 {
		t.Fatalf("final cycle: stored %d, want the deferred refresh %d", got, cw.now+10_000)
	}
}
