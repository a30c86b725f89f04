package shardmap

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func ids(prefix string, n, width int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("%s%0*d", prefix, width-len(prefix), i))
	}
	return out
}

// BenchmarkTouchParallel refreshes 100k existing sessions from all Ps.
func BenchmarkTouchParallel(b *testing.B) {
	m := newTestMap(b, Config{})
	users, rooms := ids("user-", 100_000, 16), ids("room-", 1000, 10)
	for i, u := range users {
		m.Touch(u, rooms[i%len(rooms)], t0, 150_000)
	}
	var seq atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1) * 7919)
		for pb.Next() {
			i++
			k := i % len(users)
			m.Touch(users[k], rooms[k%len(rooms)], t0+int64(i&1023), 150_000)
		}
	})
}

// BenchmarkTouchJoin starts new sessions (users and rooms are new to the map
// the first time round, reused after the map is cleared).
func BenchmarkTouchJoin(b *testing.B) {
	m := newTestMap(b, Config{})
	users, rooms := ids("user-", 100_000, 16), ids("room-", 1000, 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(users)
		if k == 0 && i > 0 {
			b.StopTimer()
			m.Expire(t0+1_000_000_000, nil)
			b.StartTimer()
		}
		m.Touch(users[k], rooms[k%len(rooms)], t0, 150_000)
	}
}

// BenchmarkExpire measures expiring sessions: per op, one session expires
// (100k sessions spread over 10 s of expiry, expired tick by tick).
func BenchmarkExpire(b *testing.B) {
	users, rooms := ids("user-", 100_000, 16), ids("room-", 1000, 10)
	m := newTestMap(b, Config{})
	var ev []Event
	b.ReportAllocs()
	b.ResetTimer()
	expired := 0
	for expired < b.N {
		b.StopTimer()
		base := t0 + int64(expired)*1000 // move on so refills land ahead of the wheel
		for i, u := range users {
			m.Touch(u, rooms[i%len(rooms)], base, int64(i%100_000)/10+100)
		}
		b.StartTimer()
		for now := base; now <= base+10_200; now += 100 {
			ev = m.Expire(now, ev[:0])
			expired += len(ev)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(expired), "ns/session")
}

// BenchmarkMemory1M fills 1M sessions (16-byte user ids, 1000 rooms) and
// reports the live heap per session and the cost of a forced GC with the map
// full: its stop-the-world pause (gc-pause-ns) and its wall time
// (gc-wall-ns, mostly concurrent marking). The ids are generated into one
// flat buffer so the benchmark's own data adds nothing for the GC to scan.
func BenchmarkMemory1M(b *testing.B) { benchMemory(b, nil) }

// BenchmarkMemory1MState is BenchmarkMemory1M with a 100-byte state on
// every session.
func BenchmarkMemory1MState(b *testing.B) {
	state := []byte(`{"status":"away","device":"ios","v":"` + strings.Repeat("x", 61) + `"}`)
	if len(state) != 100 {
		b.Fatalf("state is %d bytes", len(state))
	}
	benchMemory(b, state)
}

// BenchmarkMemory1MTwoConns is BenchmarkMemory1M with every session held
// by two named connections (16-byte ids, as the browser module's), and
// reports the heap per connection as well.
func BenchmarkMemory1MTwoConns(b *testing.B) { benchMemoryConns(b, nil, 2) }

func benchMemory(b *testing.B, state []byte) { benchMemoryConns(b, state, 0) }

func benchMemoryConns(b *testing.B, state []byte, conns int) {
	const n, w = 1_000_000, 16
	var connIDs [][]byte
	for c := range conns {
		connIDs = append(connIDs, fmt.Appendf(nil, "conn-%011d", c))
	}
	flat := make([]byte, 0, n*w)
	for i := range n {
		flat = fmt.Appendf(flat, "u%0*d", w-1, i)
	}
	rooms := ids("room-", 1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := newTestMap(b, Config{})
		for i := range n {
			if conns == 0 {
				if _, err := m.TouchState(flat[i*w:(i+1)*w], rooms[i%len(rooms)], t0, 150_000, StateOp{Set: state != nil, State: state}); err != nil {
					b.Fatal(err)
				}
			}
			for _, c := range connIDs {
				if _, err := m.TouchConn(flat[i*w:(i+1)*w], rooms[i%len(rooms)], c, t0, 150_000, StateOp{}); err != nil {
					b.Fatal(err)
				}
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/session")
		if conns > 0 {
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n*conns), "heapB/conn")
			if m.Stats().Connections != int64(n*conns) {
				b.Fatal("lost connections")
			}
		}
		start := time.Now()
		runtime.GC()
		b.ReportMetric(float64(time.Since(start).Nanoseconds()), "gc-wall-ns")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.PauseNs[(ms.NumGC+255)%256]), "gc-pause-ns")
		if m.Stats().Sessions != n {
			b.Fatal("lost sessions")
		}
		runtime.KeepAlive(m)
	}
}

// BenchmarkRefreshAtSize refreshes sessions of a table holding 100k or 10M
// of them (16-byte user ids, 1000 rooms), in a scattered order, as
// heartbeats from many clients arrive: the cost per refresh should not grow
// with the table (its cache misses are the difference). The times advance
// as a 60 s interval would.
func BenchmarkRefreshAtSize(b *testing.B) { benchAtSize(b, false) }

// BenchmarkJoinAtSize is BenchmarkRefreshAtSize for joins: new users (ids
// past the table's) start sessions in a table of 100k or 10M. Each run of
// b.N joins leaves the table b.N sessions bigger, so keep b.N small
// against the table (-benchtime 1000000x).
func BenchmarkJoinAtSize(b *testing.B) { benchAtSize(b, true) }

func benchAtSize(b *testing.B, join bool) {
	for _, n := range []int{100_000, 10_000_000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			const w = 16
			total := n
			if join {
				total = n + b.N
			}
			flat := make([]byte, 0, total*w)
			for i := range total {
				flat = fmt.Appendf(flat, "u%0*d", w-1, i)
			}
			rooms := ids("room-", 1000, 10)
			m := newTestMap(b, Config{})
			for i := range n {
				m.Touch(flat[i*w:(i+1)*w], rooms[i%len(rooms)], t0, 150_000)
			}
			runtime.GC()
			b.ReportAllocs()
			b.ResetTimer()
			x := uint64(88172645463325252)
			if join {
				for i := 0; i < b.N; i++ {
					k := n + i
					m.Touch(flat[k*w:(k+1)*w], rooms[k%len(rooms)], t0+1000, 150_000)
				}
				return
			}
			for i := 0; i < b.N; i++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				k := int(x % uint64(n))
				m.Touch(flat[k*w:(k+1)*w], rooms[k%len(rooms)], t0+int64(i)*60_000/int64(n)+1000, 150_000)
			}
		})
	}
}
