package events

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchSubs subscribes n readers (room "" with all set, else rooms from
// room(i)) and drains each on its own goroutine until stop is closed.
func benchSubs(b *testing.B, bus *Bus, n int, all bool, room func(i int) string) (stop func()) {
	b.Helper()
	var wg sync.WaitGroup
	subs := make([]*Sub, n)
	for i := range subs {
		subs[i] = bus.Subscribe(room(i), all, nil)
	}
	for _, s := range subs {
		wg.Add(1)
		go func(s *Sub) {
			defer wg.Done()
			var dst []*Event
			var err error
			for err == nil {
				dst, err = bus.Next(s, dst[:0], 256, nil)
			}
		}(s)
	}
	return func() {
		bus.Close()
		wg.Wait()
	}
}

// BenchmarkPublish is one event through the bus: id, ring, rendering and
// the offer to every subscriber of its room and of all rooms. Subscribers
// are drained by their own goroutines (on the same cores), so the time
// includes what a reader costs the publisher (the channel send, and
// wake-ups). The events' rooms cycle over 1000 rooms.
func BenchmarkPublish(b *testing.B) {
	rooms := make([]string, 1000)
	users := make([]string, 1000)
	for i := range rooms {
		rooms[i] = "room-" + strconv.Itoa(i)
		users[i] = "user-" + strconv.Itoa(i)
	}
	cases := []struct {
		name string
		n    int
		all  bool
		room func(i int) string
	}{
		{"subs=0", 0, false, nil},
		{"subs=1/all-rooms", 1, true, func(int) string { return "" }},
		{"subs=1/own-room", 1, false, func(int) string { return rooms[0] }},
		// every subscriber gets every event
		{"subs=1000/all-rooms", 1000, true, func(int) string { return "" }},
		// every subscriber gets every event, through the room index
		{"subs=1000/one-room", 1000, false, func(int) string { return rooms[0] }},
		// each subscriber on its own room: each event goes to one of them
		{"subs=1000/per-room", 1000, false, func(i int) string { return rooms[i] }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			bus := New(Config{History: 100000, Epoch: uint64(time.Now().UnixMilli())})
			stop := func() { bus.Close() }
			if c.n > 0 {
				stop = benchSubs(b, bus, c.n, c.all, c.room)
			}
			oneRoom := c.name == "subs=1000/one-room" || c.name == "subs=1/own-room"
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := rooms[i%len(rooms)]
				if oneRoom {
					r = rooms[0]
				}
				bus.Publish(&Event{Type: Join, User: users[i%len(users)], Room: r, At: 1764600000000})
			}
			b.StopTimer()
			st := bus.Stats()
			b.ReportMetric(float64(st.Overflows)/float64(b.N), "overflows/op")
			stop()
		})
	}
}

// BenchmarkCatchUp100k is a subscriber resuming 100,000 events behind, all
// in the ring: from Subscribe with since to the last event handed out by
// Next (batches of 256, as the SSE handler asks). One op is the whole
// resume; events/s is the rate.
func BenchmarkCatchUp100k(b *testing.B) {
	const n = 100000
	epoch := uint64(time.Now().UnixMilli())
	bus := New(Config{History: n, Epoch: epoch})
	defer bus.Close()
	for i := 0; i < n; i++ {
		bus.Publish(&Event{Type: Join, User: "user-" + strconv.Itoa(i), Room: "room-" + strconv.Itoa(i%1000), At: 1764600000000})
	}
	since := ID{epoch, 0}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := bus.Subscribe("", true, &since)
		var dst []*Event
		got := 0
		for got < n {
			var err error
			dst, err = bus.Next(s, dst[:0], 256, nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, ev := range dst {
				if ev.Type == Reset {
					b.Fatal("reset while resuming from a ring that holds every event")
				}
			}
			got += len(dst)
		}
		bus.Unsubscribe(s)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkHistoryMemory measures what an event held in the history costs
// (heap after a GC, divided by the events held) beside Event.Size's
// estimate, for states of 0, 100 and 1024 bytes: BENCHMARKS.md ("Event
// memory").
func BenchmarkHistoryMemory(b *testing.B) {
	for _, n := range []int{0, 100, 1024} {
		b.Run(fmt.Sprintf("state=%d", n), func(b *testing.B) {
			const events = 100000
			var state []byte
			if n > 0 {
				state = []byte(`{"s":"` + strings.Repeat("x", n-8) + `"}`)
			}
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				bus := New(Config{History: events, HistoryBytes: 1 << 40})
				for i := range events {
					ev := &Event{Type: Join, User: fmt.Sprintf("user-%06d", i), Room: "room-42", At: 1796137316244}
					if state != nil {
						ev.State = bytes.Clone(state)
					}
					bus.Publish(ev)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/events, "heap-B/event")
				b.ReportMetric(float64(bus.Stats().HistoryBytes)/events, "size-B/event")
				runtime.KeepAlive(bus)
			}
		})
	}
}
