package server

import (
	"hash/maphash"
	"sync/atomic"
)

// replayTable refuses a replayed v2 datagram: per client key (one per
// token), the timestamp of each accepted datagram must be later than the
// previous one's. Like sourceLimiter it is a fixed-size table of atomic
// words (--source-table-slots), indexed by a seeded hash, so it cannot grow:
//
//	63        44 43                          0
//	+-----------+----------------------------+
//	| tag (20 b)| last timestamp, unix ms    |
//	+-----------+----------------------------+
//
// Two keys sharing a slot (different tags) evict each other, which can let a
// datagram of the evicted key be replayed until it leaves the clock-skew
// window; the seed keeps such collisions from being aimed.
type replayTable struct {
	slots []atomic.Uint64
	mask  uint64
	seed  maphash.Seed
}

const replayTSBits = 44

func newReplayTable(slots int) *replayTable {
	n := 1
	for n < slots {
		n <<= 1
	}
	return &replayTable{slots: make([]atomic.Uint64, n), mask: uint64(n - 1), seed: maphash.MakeSeed()}
}

// fresh records tsMs for key and reports whether it is later than the last
// timestamp accepted for key. It does not allocate.
func (t *replayTable) fresh(key []byte, tsMs uint64) bool {
	h := maphash.Bytes(t.seed, key)
	slot := &t.slots[h&t.mask]
	tag := h >> replayTSBits
	ts := tsMs & (1<<replayTSBits - 1)
	for {
		old := slot.Load()
		if old>>replayTSBits == tag && old&(1<<replayTSBits-1) >= ts && old != 0 {
			return false
		}
		if slot.CompareAndSwap(old, tag<<replayTSBits|ts) {
			return true
		}
	}
}
