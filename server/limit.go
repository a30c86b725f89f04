package server

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"
)

// sourceLimiter rate-limits heartbeats per source IP in a fixed-size table
// of token buckets, so an attacker sending from a million addresses cannot
// grow it: each address hashes to one of len(slots) buckets (with a seed
// chosen at start, so collisions cannot be aimed), and addresses sharing a
// bucket share its rate. Each bucket is one atomic word:
//
//	63            40 39                            0
//	+---------------+-------------------------------+
//	| tokens (24 b) | last refill, mono ms mod 2^40 |
//	+---------------+-------------------------------+
//
// Behind a proxy (nginx stream, a NAT gateway) every client has the proxy's
// address, so the limit then applies to the proxy: raise it or turn it off
// (rate 0) there.
type sourceLimiter struct {
	rate  atomic.Int64 // tokens per second; 0 = no limit
	burst atomic.Int64 // bucket size
	slots []atomic.Uint64
	mask  uint64
	seed  maphash.Seed
}

const (
	limTimeBits = 40
	limTimeMask = 1<<limTimeBits - 1
	limMaxBurst = 1<<(64-limTimeBits) - 1
)

func newSourceLimiter(slots int, rate, burst int64) *sourceLimiter {
	n := 1
	for n < slots {
		n <<= 1
	}
	l := &sourceLimiter{slots: make([]atomic.Uint64, n), mask: uint64(n - 1), seed: maphash.MakeSeed()}
	l.set(rate, burst)
	return l
}

// set changes the rate and burst (safe at any time, e.g. on reload).
func (l *sourceLimiter) set(rate, burst int64) {
	burst = min(max(burst, 1), limMaxBurst)
	l.burst.Store(burst)
	l.rate.Store(max(rate, 0))
}

// allowAddr is allow for an address, in its 16-byte form, so that a
// client is charged to the same bucket over UDP and HTTP.
func (l *sourceLimiter) allowAddr(ip netip.Addr, cost int64, nowMs int64) bool {
	b := ip.As16()
	return l.allow(b[:], cost, nowMs)
}

// allow takes cost tokens from src's bucket and reports whether it had them.
// nowMs is monotonic time (clock), never wall time: a wall clock stepped
// back would otherwise refill no bucket until it caught up. It does not
// allocate.
func (l *sourceLimiter) allow(src []byte, cost int64, nowMs int64) bool {
	rate := l.rate.Load()
	if rate == 0 {
		return true
	}
	burst := l.burst.Load()
	slot := &l.slots[maphash.Bytes(l.seed, src)&l.mask]
	now := uint64(nowMs) & limTimeMask
	for {
		old := slot.Load()
		tokens, last := int64(old>>limTimeBits), old&limTimeMask
		if old == 0 {
			tokens, last = burst, now
		}
		// Two event loops read the clock independently: one may come here
		// with a now a little older than the last refill. That is no time
		// passing, not 2^40 ms of it (which would refill the bucket).
		elapsed := int64(now) - int64(last)
		if elapsed < -(1 << (limTimeBits - 1)) {
			elapsed += 1 << limTimeBits // the 34-year wrap of the field
		}
		elapsed = max(elapsed, 0)
		if refill := elapsed * rate / 1000; refill > 0 {
			tokens = min(burst, tokens+refill)
			last = (last + uint64(refill*1000/rate)) & limTimeMask
			if tokens == burst {
				last = now
			}
		}
		ok := tokens >= cost
		if ok {
			tokens -= cost
		}
		if slot.CompareAndSwap(old, uint64(tokens)<<limTimeBits|last) {
			return ok
		}
	}
}
