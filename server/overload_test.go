package server

import (
	"net"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/wire"
)

const sec = int64(1000) // ms

// The state machine enters shedding on the first check whose drops reach
// the ratio of what was offered, ignores drops under the ratio, stays
// through a cooldown in which overload returns, and leaves after a full
// cooldown without it; each change is one transition.
func TestOverloadEntersAndLeavesShedding(t *testing.T) {
	o := newOverload(overloadParams{ratio: 0.01, cooldown: 10 * sec, maxHold: 300 * sec, grace: 120 * sec})
	now := int64(1_000_000)
	var drops, intake uint64
	check := func(d, n uint64) bool {
		t.Helper()
		now += sec
		drops += d
		intake += n
		return o.step(now, drops, intake)
	}
	if check(0, 0) || o.shedding.Load() {
		t.Fatal("the first sample only primes the machine")
	}
	if check(5, 1000) || o.shedding.Load() {
		t.Fatal("0.5% dropped (under --overload-drop-ratio 1%) started shedding")
	}
	if !check(20, 1000) || !o.shedding.Load() {
		t.Fatal("2% dropped did not start shedding")
	}
	for i := range 9 {
		if check(0, 1000) || !o.shedding.Load() {
			t.Fatalf("left shedding %d s into a 10 s cooldown", i+1)
		}
	}
	if check(50, 1000) || !o.shedding.Load() { // overload again: the cooldown restarts
		t.Fatal("overload during the cooldown changed the state")
	}
	for i := range 9 {
		if check(0, 1000) {
			t.Fatalf("left shedding %d s after the last overload, cooldown 10 s", i+1)
		}
	}
	if !check(0, 1000) || o.shedding.Load() {
		t.Fatal("did not leave shedding after 10 s without overload")
	}
	if got := o.transitions.Load(); got != 2 {
		t.Fatalf("transitions = %d, want 2 (in and out)", got)
	}
	// Drops with nothing taken in are overload too (a node that reads
	// nothing at all).
	if !check(3, 0) || !o.shedding.Load() {
		t.Fatal("drops with no intake did not start shedding")
	}
}

// A ratio of 0 turns shedding off, whatever the kernel drops.
func TestOverloadRatioZeroNeverSheds(t *testing.T) {
	o := newOverload(overloadParams{ratio: 0, cooldown: sec, maxHold: sec, grace: sec})
	for i := range 5 {
		if o.step(int64(i)*sec, uint64(i)*1000, 0) || o.shedding.Load() {
			t.Fatal("shed with --overload-drop-ratio 0")
		}
	}
}

// Timeouts are held from the start of shedding for at most maxHold in a
// row, even while the node still sheds; leaving shedding keeps them held
// for the grace only; shedding again while still held does not restart the
// bound.
func TestOverloadHoldIsBounded(t *testing.T) {
	const maxHold, grace = 300 * sec, 120 * sec
	o := newOverload(overloadParams{ratio: 0.01, cooldown: 10 * sec, maxHold: maxHold, grace: grace})
	t0 := int64(1_000_000)
	o.step(t0-sec, 0, 0)
	if o.holding(t0) {
		t.Fatal("holding before any overload")
	}
	o.step(t0, 100, 100) // shedding from t0
	for _, at := range []int64{t0, t0 + 100*sec, t0 + maxHold - 1} {
		if !o.holding(at) {
			t.Fatalf("timeouts not held %d ms into shedding", at-t0)
		}
	}
	// Still overloaded at the bound: the hold ends anyway.
	for at := t0 + sec; at <= t0+maxHold; at += sec {
		o.step(at, uint64(100+at-t0), 100)
	}
	if !o.shedding.Load() {
		t.Fatal("not shedding under continued drops")
	}
	if o.holding(t0 + maxHold) {
		t.Fatalf("timeouts still held at --overload-max-hold (%d s) while shedding", maxHold/sec)
	}

	// Shedding ends before the bound: the hold lasts the grace, then ends.
	o = newOverload(overloadParams{ratio: 0.01, cooldown: 10 * sec, maxHold: maxHold, grace: grace})
	o.step(t0-sec, 0, 0)
	o.step(t0, 100, 100)
	end := t0 + 10*sec
	if !o.step(end, 100, 200) || o.shedding.Load() {
		t.Fatal("did not leave shedding after the cooldown")
	}
	if !o.holding(end + grace - 1) {
		t.Fatal("timeouts not held during the grace after shedding")
	}
	if o.holding(end + grace) {
		t.Fatal("timeouts still held after the grace")
	}

	// Shedding again within the grace continues the same run of held
	// timeouts: the bound counts from t0, not from the new entry.
	o = newOverload(overloadParams{ratio: 0.01, cooldown: 10 * sec, maxHold: maxHold, grace: grace})
	o.step(t0-sec, 0, 0)
	o.step(t0, 100, 100)
	o.step(end, 100, 200)     // leaves, held until end+grace
	o.step(end+sec, 200, 300) // sheds again, still held
	if !o.shedding.Load() || o.holding(t0+maxHold) || !o.holding(t0+maxHold-1) {
		t.Fatal("a re-entry within the hold extended it past --overload-max-hold from the first entry")
	}
	// After a full release, a new entry starts a new bound.
	o.step(end+20*sec, 200, 400)
	later := t0 + 2*maxHold
	o.step(later, 300, 500)
	if !o.holding(later + maxHold - 1) {
		t.Fatal("a new overload after the hold ended did not hold timeouts again")
	}
}

// While the node sheds, the sweeper expires nothing up to the hold bound,
// and the session the kernel's drops would have expired stays online; after
// shedding ends and the grace passes, an expired session ends as a timeout.
func TestSheddingHoldsTimeouts(t *testing.T) {
	s, clk := newClockedServer(t, func(c *Config) {
		c.TTL, c.Interval = 10*time.Second, 2*time.Second
		c.OverloadCooldown, c.OverloadMaxHold = 5*time.Second, time.Minute
	})
	wall, _ := clk.Now()
	if o := s.heartbeat(trHTTP, []byte("alice"), []byte("r"), nil, nil, wall); o != outOK {
		t.Fatalf("heartbeat: %v", o)
	}
	_, mono := clk.Now()
	s.ovl.step(mono, 0, 0)
	s.ovl.step(mono, 500, 500)
	if !s.ovl.shedding.Load() {
		t.Fatal("not shedding")
	}
	online := func() bool { _, _, on := s.m.User([]byte("alice"), nil); return on }
	// 30 s pass without a heartbeat (the kernel dropped them): 3 TTLs.
	clk.advance(30 * time.Second)
	s.sweep(wall+30_000, nil)
	if !online() {
		t.Fatal("a session expired while the node shed (its heartbeats may be the dropped ones)")
	}
	if v := s.met.leavesTimeout.Load(); v != 0 {
		t.Fatalf("%d timeouts while shedding", v)
	}
	// The drops stopped: shedding ends at the next check after the
	// cooldown; the grace is the slowed-down interval (2 x 2 s).
	clk.advance(5 * time.Second)
	_, mono = clk.Now()
	if !s.ovl.step(mono, 500, 1000) || s.ovl.shedding.Load() {
		t.Fatal("did not leave shedding after the cooldown")
	}
	clk.advance(3 * time.Second)
	s.sweep(wall+38_000, nil)
	if !online() {
		t.Fatal("expired during the grace after shedding")
	}
	clk.advance(time.Second)
	s.sweep(wall+39_000, nil)
	if online() {
		t.Fatal("a session silent for 39 s (TTL 10 s) still online after the grace")
	}
	if v := s.met.leavesTimeout.Load(); v != 1 {
		t.Fatalf("timeouts = %d, want 1", v)
	}
}

// While the node sheds, every reply with timing says interval and ttl times
// --overload-backoff: UDP acks, HTTP heartbeat and batch answers (the
// WebSocket answer is checked black-box in TestSheddingTellsClientsToSlowDown).
func TestSheddingRepliesCarrySlowerTiming(t *testing.T) {
	s, clk := newClockedServer(t, nil)
	u := &udpServer{s: s}
	c := &fakeConn{}
	ack := func(seq uint32) (uint32, uint32) {
		t.Helper()
		c.in, _ = wire.AppendRequest(nil, seq, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("r")}})
		before := c.replies
		u.OnTraffic(c)
		if c.replies != before+1 {
			t.Fatal("no ack")
		}
		var r wire.Reply
		if err := r.Decode(c.last); err != nil || !r.HasTiming {
			t.Fatalf("ack %x: %v, timing %v", c.last, err, r.HasTiming)
		}
		return r.IntervalMs, r.TTLMs
	}
	if iv, ttl := ack(1); iv != 60_000 || ttl != 150_000 {
		t.Fatalf("normal ack timing %d/%d, want 60000/150000", iv, ttl)
	}
	_, mono := clk.Now()
	s.ovl.step(mono, 0, 0)
	s.ovl.step(mono, 500, 500)
	if iv, ttl := ack(2); iv != 120_000 || ttl != 300_000 {
		t.Fatalf("shedding ack timing %d/%d, want 120000/300000", iv, ttl)
	}
	if got := string(s.heartbeatReply()); got != `{"interval_ms":120000,"ttl_ms":300000}` {
		t.Fatalf("shedding HTTP heartbeat answer %s", got)
	}
	clk.advance(s.cfg.OverloadCooldown)
	_, mono = clk.Now()
	s.ovl.step(mono, 500, 1000)
	if iv, ttl := ack(3); iv != 60_000 || ttl != 150_000 {
		t.Fatalf("ack timing after shedding %d/%d, want 60000/150000", iv, ttl)
	}
	if got := string(s.heartbeatReply()); got != `{"interval_ms":60000,"ttl_ms":150000}` {
		t.Fatalf("HTTP heartbeat answer after shedding %s", got)
	}
}

// kernelDrops reads the drops the kernel counts for a socket nobody reads:
// the same number /proc/net/udp shows in its drops column for that port.
func TestKernelDropsOfAnUnreadSocket(t *testing.T) {
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := ln.SetReadBuffer(1); err != nil { // the kernel's minimum
		t.Fatal(err)
	}
	port := ln.LocalAddr().(*net.UDPAddr).Port
	var k kernelDrops
	k.watch(port, 1)
	if got := k.sample(); got != 0 {
		t.Fatalf("drops before any traffic = %d", got)
	}
	out, err := net.DialUDP("udp", nil, ln.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	payload := make([]byte, 1000)
	for range 200 {
		_, _ = out.Write(payload)
	}
	got, want := k.sample(), testkit.UDPPortDrops(t, port)
	if want == 0 {
		t.Fatal("the kernel dropped nothing: the test did not overflow the queue")
	}
	if got != want {
		t.Fatalf("kernelDrops = %d, /proc/net/udp says %d", got, want)
	}
	k.forget()
	if again := k.sample(); again != got {
		t.Fatalf("after forget the total moved from %d to %d", got, again)
	}
}
