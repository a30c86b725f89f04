package server

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/wire"
)

// fakeClock is a clock whose wall time a test can step without moving the
// monotonic time, as NTP or an operator does.
type fakeClock struct{ wall, mono atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.wall.Store(time.Now().UnixMilli())
	c.mono.Store(3_600_000)
	return c
}

func (c *fakeClock) Now() (int64, int64) { return c.wall.Load(), c.mono.Load() }

// advance moves both clocks by d; step moves the wall clock alone.
func (c *fakeClock) advance(d time.Duration) {
	c.wall.Add(d.Milliseconds())
	c.mono.Add(d.Milliseconds())
}
func (c *fakeClock) step(d time.Duration) { c.wall.Add(d.Milliseconds()) }

func newClockedServer(t *testing.T, mod func(*Config)) (*Server, *fakeClock) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = ""
	cfg.HeartbeatMinGap = 0
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg, NewLogger(io.Discard, cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	s.clk = clk
	s.state.Store(stateReady)
	return s, clk
}

// After the wall clock is stepped back an hour, a source's bucket still
// refills with (monotonic) time: sources are not all refused until the wall
// clock catches up.
func TestSourceLimitSurvivesWallClockStep(t *testing.T) {
	s, clk := newClockedServer(t, func(c *Config) { c.SourceRate, c.SourceBurst = 10, 10 })
	u := &udpServer{s: s}
	c := &fakeConn{}
	send := func(seq uint32) bool {
		t.Helper()
		var err error
		c.in, err = wire.AppendRequest(nil, seq, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("r")}})
		if err != nil {
			t.Fatal(err)
		}
		before := c.replies
		u.OnTraffic(c)
		return c.replies > before
	}
	for i := range 10 {
		if !send(uint32(i)) {
			t.Fatalf("datagram %d of the burst refused", i)
		}
	}
	if send(10) {
		t.Fatal("datagram over the burst accepted")
	}
	clk.step(-time.Hour)
	clk.advance(time.Second) // 10 tokens at 10/s
	for i := range 10 {
		if !send(uint32(100 + i)) {
			t.Fatalf("after a 1 h wall step back and 1 s: datagram %d refused, the bucket did not refill", i)
		}
	}
}

// The watchdog's Alive measures the sweeper's age on the monotonic clock: a
// wall step forward does not make a healthy node look dead, and a sweeper
// that stopped is noticed although the wall clock was stepped back.
func TestAliveUsesMonotonicTime(t *testing.T) {
	s, clk := newClockedServer(t, func(c *Config) { c.SweepInterval = 10 * time.Millisecond })
	s.routines.Go("sweeper", s.sweepLoop)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(s.quit)
			s.routines.Wait()
		}
	}
	t.Cleanup(stop)
	testkit.Eventually(t, 5*time.Second, "the sweeper to finish a pass", func() bool { return s.lastSweep.Load() != 0 })
	clk.step(time.Hour)
	if !s.Alive() {
		t.Fatal("a 1 h wall step forward made a sweeping node not alive")
	}
	stop()
	clk.step(-2 * time.Hour)
	clk.advance(11 * time.Second)
	if s.Alive() {
		t.Fatal("a sweeper stopped for 11 s (monotonic) still reads alive")
	}
}

// Behind a trusted proxy (every datagram from one address), a junk sender
// cannot starve legitimate users: the proxy's datagrams are not charged to
// the per-source budget; tokens still decide what is applied and answered.
func TestTrustedProxyUDPJunkFlood(t *testing.T) {
	flood := func(trusted string) (acked, legit int) {
		s, kr := newTestServer(t)
		s.src.set(10, 10)
		s.proxies, _ = parseProxySet(trusted)
		u := &udpServer{s: s}
		dgs := signedDatagram(t, kr, 200)
		junkTok, _ := kr.Mint("", "someone-else", "", false, time.Now().Add(time.Hour))
		junk, _ := wire.AppendRequest(nil, 9, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte("victim"), Token: []byte(junkTok)}})
		c := &fakeConn{}
		for _, d := range dgs {
			for range 5 {
				c.in = junk
				u.OnTraffic(c)
			}
			c.in = d
			before := c.replies
			u.OnTraffic(c)
			if c.replies > before {
				acked++
			}
		}
		if c.replies != acked {
			t.Fatalf("junk datagrams were answered: %d replies, %d legitimate acks", c.replies, acked)
		}
		return acked, len(dgs)
	}
	if acked, legit := flood("192.0.2.1"); acked != legit {
		t.Fatalf("behind a trusted proxy: %d of %d legitimate datagrams acked during a junk flood", acked, legit)
	}
	// Without --trusted-proxies the proxy's address is one source: starved.
	if acked, legit := flood(""); acked >= legit {
		t.Fatalf("untrusted proxy address: all %d acked, the per-source limit did not apply", legit)
	}
}
