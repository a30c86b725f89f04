package server

import (
	"encoding/binary"
	"testing"
)

func TestSourceLimiterRate(t *testing.T) {
	l := newSourceLimiter(1024, 100, 20) // 100/s, burst 20
	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	now := int64(1_700_000_000_000)
	got := 0
	for range 1000 {
		if l.allow(a, 1, now) {
			got++
		}
	}
	if got != 20 {
		t.Fatalf("burst: %d allowed at one instant, want 20", got)
	}
	// One second later: 100 more, no more.
	got = 0
	for i := range 1000 {
		if l.allow(a, 1, now+1000+int64(i%2)) {
			got++
		}
	}
	if got < 20 || got > 21 {
		// the bucket refills to at most burst (20) after a second
		t.Fatalf("after 1s: %d allowed, want the burst of 20", got)
	}
	// Spread over 10 s at 1 ms steps: about rate*10 allowed.
	got = 0
	for ms := int64(0); ms < 10_000; ms++ {
		for range 3 {
			if l.allow(a, 1, now+5000+ms) {
				got++
			}
		}
	}
	if got < 990 || got > 1025 {
		t.Fatalf("10 s flood: %d allowed, want about 1000 (100/s)", got)
	}
	if !l.allow(b, 1, now+5000) {
		t.Fatal("another source was limited by the flood")
	}
	l.set(0, 0)
	for range 100 {
		if !l.allow(a, 1, now+20_000) {
			t.Fatal("rate 0 must turn the limit off")
		}
	}
}

// TestSourceLimiterClockSkew: event loops read the clock on their own, so
// a datagram may carry a now slightly older than the bucket's last refill;
// that must not refill the bucket.
func TestSourceLimiterClockSkew(t *testing.T) {
	l := newSourceLimiter(64, 100, 10)
	src := []byte{10, 0, 0, 9}
	now := int64(1_700_000_000_000)
	got := 0
	for i := range 1000 {
		if l.allow(src, 1, now-int64(i%2)) { // alternately 1 ms in the past
			got++
		}
	}
	if got != 10 {
		t.Fatalf("%d allowed with a skewed clock, want the burst of 10", got)
	}
}

// TestSourceLimiterAllocs: allow allocates nothing, also after a million
// distinct sources (the table has a fixed size; its length cannot change,
// so that is not asserted).
func TestSourceLimiterAllocs(t *testing.T) {
	l := newSourceLimiter(65536, 10, 10)
	now := int64(1_700_000_000_000)
	ip := make([]byte, 16)
	for i := range 1_000_000 {
		binary.BigEndian.PutUint32(ip[12:], uint32(i))
		l.allow(ip, 1, now)
	}
	allocs := testing.AllocsPerRun(1000, func() { l.allow(ip, 1, now) })
	if allocs != 0 {
		t.Fatalf("allow allocates %v", allocs)
	}
}
