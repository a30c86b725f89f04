package server

import (
	"sync"
	"sync/atomic"
	"time"
)

// Overload: when the kernel drops datagrams because the node does not read
// its UDP sockets fast enough, the node "sheds":
//
//   - the sweeper holds timeouts (expires nothing), so sessions are not
//     ended because of heartbeats the node itself dropped, for at most
//     --overload-max-hold in a row; when shedding ends, the hold lasts one
//     more slowed-down interval (the grace) so live clients refresh first;
//   - every reply that carries timing (HTTP heartbeat and batch answers,
//     WebSocket heartbeat answers, UDP acks) says interval_ms and ttl_ms
//     multiplied by --overload-backoff, and the clients that follow it bring
//     the offered load down;
//   - presenced_overload_shedding is 1 and one log line marks each change.
//
//	            drops >= ratio of (drops + intake) in one check
//	  normal ───────────────────────────────────────────────────> shedding
//	    ^                                                            │
//	    └──────── no such check for --overload-cooldown ─────────────┘
//
// The signal is the kernel's receive-queue drops of the node's own UDP
// sockets (kernelDrops), set against the datagrams it took in over the same
// check: it is the loss clients suffer, measured where it happens, and it
// is zero for a node that keeps up however busy it is. HTTP and WebSocket
// intake have no such queue: a node that only takes HTTP never sheds.

// overloadCheckEvery is how often the monitor samples the kernel's drops.
const overloadCheckEvery = time.Second

// overloadParams are the state machine's settings, in milliseconds.
type overloadParams struct {
	ratio    float64 // --overload-drop-ratio; 0: never shed
	cooldown int64   // --overload-cooldown
	maxHold  int64   // --overload-max-hold
	grace    int64   // the slowed-down interval: hold after shedding ends
}

// overload is the shedding state machine. Its clock is the caller's: step
// and holding take monotonic milliseconds, so tests drive it by hand.
// step is called by one goroutine (the monitor); shedding and holding may
// be read by any (the intake paths read shedding through timing).
type overload struct {
	p           overloadParams
	shedding    atomic.Bool
	transitions atomic.Uint64
	mu          struct {
		sync.Mutex
		primed         bool
		drops, intake  uint64 // the previous sample
		lastOver       int64  // the last check that saw overload
		holdStart      int64  // start of the current run of held timeouts
		holdEnd        int64  // timeouts are held while now < holdEnd
		lastRatio      float64
		lastDropsDelta uint64
	}
}

func newOverload(p overloadParams) *overload { return &overload{p: p} }

// step takes one sample at monoMs: the cumulative kernel drops and
// datagrams taken in. It reports whether the state changed.
func (o *overload) step(monoMs int64, drops, intake uint64) (changed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.mu.primed {
		o.mu.primed, o.mu.drops, o.mu.intake = true, drops, intake
		return false
	}
	d, n := drops-o.mu.drops, intake-o.mu.intake
	if drops < o.mu.drops { // the sockets were found again: start over
		d = 0
	}
	if intake < o.mu.intake {
		n = 0
	}
	o.mu.drops, o.mu.intake = drops, intake
	o.mu.lastDropsDelta = d
	o.mu.lastRatio = 0
	if d > 0 {
		o.mu.lastRatio = float64(d) / float64(d+n)
	}
	over := o.p.ratio > 0 && d > 0 && o.mu.lastRatio >= o.p.ratio
	if over {
		o.mu.lastOver = monoMs
	}
	shed := o.shedding.Load()
	switch {
	case !shed && over:
		if monoMs >= o.mu.holdEnd {
			o.mu.holdStart = monoMs // a new run of held timeouts
		}
		o.mu.holdEnd = o.mu.holdStart + o.p.maxHold
		o.shedding.Store(true)
	case shed && !over && monoMs-o.mu.lastOver >= o.p.cooldown:
		o.mu.holdEnd = min(o.mu.holdEnd, monoMs+o.p.grace)
		o.shedding.Store(false)
	default:
		return false
	}
	o.transitions.Add(1)
	return true
}

// last returns the drops and their share of the offered datagrams in the
// latest check (for the log line of a change).
func (o *overload) last() (drops uint64, ratio float64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mu.lastDropsDelta, o.mu.lastRatio
}

// holding reports whether the sweeper must not expire sessions at monoMs.
func (o *overload) holding(monoMs int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return monoMs < o.mu.holdEnd
}

// timing is the interval and ttl replies carry (ms): the configured ones,
// multiplied by --overload-backoff while the node sheds.
func (s *Server) timing() (intervalMs, ttlMs int64) {
	if s.ovl.shedding.Load() {
		f := int64(s.cfg.OverloadBackoff)
		return s.intervalMs * f, s.ttlMs * f
	}
	return s.intervalMs, s.ttlMs
}

// heartbeatReply is the body of a successful HTTP heartbeat (precomputed).
func (s *Server) heartbeatReply() []byte {
	if s.ovl.shedding.Load() {
		return s.hbReplyShed
	}
	return s.hbReply
}

// overloadLoop samples the UDP sockets' kernel drops every
// overloadCheckEvery and steps the shedding state machine, logging each
// change.
func (s *Server) overloadLoop() {
	t := time.NewTicker(overloadCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.checkOverload()
		}
	}
}

// checkOverload takes one sample and logs a change of state.
func (s *Server) checkOverload() {
	_, mono := s.clk.Now()
	if !s.ovl.step(mono, s.drops.sample(), s.met.udpIn.Load()) {
		return
	}
	drops, ratio := s.ovl.last()
	if s.ovl.shedding.Load() {
		iv, ttl := s.timing()
		s.log.Warn("overload: shedding: the kernel dropped UDP datagrams the node did not read; holding timeouts and telling clients to slow down",
			"dropped", drops, "dropped_ratio", ratio, "interval", time.Duration(iv)*time.Millisecond, "ttl", time.Duration(ttl)*time.Millisecond,
			"max_hold", s.cfg.OverloadMaxHold)
		return
	}
	s.log.Info("overload: recovered: no kernel drops for --overload-cooldown; timeouts resume after the grace",
		"cooldown", s.cfg.OverloadCooldown, "grace", time.Duration(s.ovl.p.grace)*time.Millisecond)
}

// registerOverloadMetrics adds the kernel drop counter and the shedding
// state.
func (s *Server) registerOverloadMetrics() {
	r := s.reg
	r.counterFunc("presenced_udp_kernel_drops_total", "UDP datagrams the kernel dropped because this node's socket receive queues were full (SK_MEMINFO_DROPS of each UDP socket): offered but never read.", func() float64 { return float64(s.drops.sample()) })
	r.gaugeFunc("presenced_overload_shedding", "1 while the node sheds: kernel drops reached --overload-drop-ratio; timeouts are held and replies carry interval_ms and ttl_ms times --overload-backoff.", func() float64 {
		if s.ovl.shedding.Load() {
			return 1
		}
		return 0
	})
	r.counterFunc("presenced_overload_transitions_total", "Changes of the shedding state (into shedding and back).", func() float64 { return float64(s.ovl.transitions.Load()) })
	r.gaugeFunc("presenced_overload_timeouts_held", "1 while the sweeper holds timeouts (shedding, at most --overload-max-hold in a row, and the grace after it).", func() float64 {
		_, mono := s.clk.Now()
		if s.ovl.holding(mono) {
			return 1
		}
		return 0
	})
}
