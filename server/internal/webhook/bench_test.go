package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/redistest"
)

// lagReceiver answers 204 at once and records, per event, the time from
// its "at" to its arrival.
type lagReceiver struct {
	mu  sync.Mutex
	lag []time.Duration
}

func (l *lagReceiver) start(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		now := time.Now()
		var v struct{ Events []struct{ At time.Time } }
		_ = json.Unmarshal(body, &v)
		l.mu.Lock()
		for _, e := range v.Events {
			l.lag = append(l.lag, now.Sub(e.At))
		}
		l.mu.Unlock()
		w.WriteHeader(204)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func (l *lagReceiver) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lag)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const (
	benchRate    = 10_000 // events per second
	benchSeconds = 3
)

// drive calls emit(n) every 10 ms for benchSeconds with the events due by
// then, and returns how many it emitted.
func drive(emit func(from, n int)) int {
	t0 := time.Now()
	sent := 0
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for time.Since(t0) < benchSeconds*time.Second {
		<-tk.C
		due := int(time.Since(t0).Seconds() * benchRate)
		if due > sent {
			emit(sent, due-sent)
			sent = due
		}
	}
	return sent
}

func report(b *testing.B, l *lagReceiver, sent int, cpu, wall time.Duration) {
	testkit.EventuallyErr(b, 30*time.Second, "every event delivered", func() error {
		if n := l.n(); n < sent {
			return fmt.Errorf("delivered %d of %d", n, sent)
		}
		return nil
	})
	l.mu.Lock()
	lag := slices.Clone(l.lag)
	l.mu.Unlock()
	slices.Sort(lag)
	b.ReportMetric(float64(lag[len(lag)/2].Milliseconds()), "lag-p50-ms")
	b.ReportMetric(float64(lag[len(lag)*99/100].Milliseconds()), "lag-p99-ms")
	b.ReportMetric(cpu.Seconds()/wall.Seconds()*100, "cpu-%")
}

// BenchmarkDelivery10k drives 10,000 events/s for 3 s through each kind
// of deliverer into a receiver that answers at once, and reports the
// delivery lag (event "at" to arrival) and the CPU of the whole test
// process (generator and receiver included). b.N is ignored.
func BenchmarkDelivery10k(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	local := func(b *testing.B, q *persist.Queue) {
		l := &lagReceiver{}
		c := cfg
		c.URL = l.start(b).URL
		bus := events.New(events.Config{Epoch: 1})
		d, err := StartLocal(c, bus, q, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer d.Stop()
		cpu0, t0 := cpuTime(), time.Now()
		sent := drive(func(from, n int) {
			for i := from; i < from+n; i++ {
				bus.Publish(&events.Event{Type: events.Join, User: "u" + strconv.Itoa(i), Room: "r" + strconv.Itoa(i%100), At: time.Now().UnixMilli()})
			}
		})
		report(b, l, sent, cpuTime()-cpu0, time.Since(t0))
	}
	b.Run("single-memory", func(b *testing.B) { local(b, nil) })
	b.Run("single-pebble", func(b *testing.B) {
		pc := persist.DefaultConfig()
		pc.Dir = b.TempDir()
		pc.Logger = cfg.Logger
		st, err := persist.Open(pc)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		q, err := st.OpenQueue()
		if err != nil {
			b.Fatal(err)
		}
		local(b, q)
	})
	b.Run("cluster-redis", func(b *testing.B) {
		r := redistest.Start(b)
		c := r.Client()
		defer c.Close()
		l := &lagReceiver{}
		hc := cfg
		hc.URL = l.start(b).URL
		decode := func(m redis.XMessage) (*events.Event, bool) {
			id, _ := events.ParseID(m.ID)
			at, _ := strconv.ParseInt(m.Values["at"].(string), 10, 64)
			return &events.Event{ID: id, Type: events.Join, User: m.Values["user"].(string), Room: m.Values["room"].(string), At: at}, true
		}
		d, err := StartCluster(hc, c, "pd:events", "bench", decode)
		if err != nil {
			b.Fatal(err)
		}
		defer d.Stop()
		testkit.Eventually(b, 5*time.Second, "the delivery lease", d.IsLeader)
		time.Sleep(200 * time.Millisecond) // the group exists
		ctx := context.Background()
		cpu0, t0 := cpuTime(), time.Now()
		cmd0 := d.RedisCommands()
		sent := drive(func(from, n int) {
			p := c.Pipeline()
			for i := from; i < from+n; i++ {
				p.XAdd(ctx, &redis.XAddArgs{Stream: "pd:events", MaxLen: 100000, Approx: true,
					Values: []any{"type", "join", "user", "u" + strconv.Itoa(i), "room", "r" + strconv.Itoa(i%100), "at", time.Now().UnixMilli(), "reason", "", "state", "", "node", "n"}})
			}
			_, _ = p.Exec(ctx)
		})
		report(b, l, sent, cpuTime()-cpu0, time.Since(t0))
		b.ReportMetric(float64(d.RedisCommands()-cmd0)/float64(sent), "redis-cmds/event")
	})
}

// BenchmarkMemQueueMemory measures what an event costs in the in-memory
// delivery queue (heap after a GC, per event; the events themselves gone
// from the bus's history) beside recSize's estimate, for states of 0, 100
// and 1024 bytes: BENCHMARKS.md ("Event memory").
func BenchmarkMemQueueMemory(b *testing.B) {
	for _, n := range []int{0, 100, 1024} {
		b.Run(fmt.Sprintf("state=%d", n), func(b *testing.B) {
			const count = 100000
			var state []byte
			if n > 0 {
				state = []byte(`{"s":"` + strings.Repeat("x", n-8) + `"}`)
			}
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				q := &memQueue{}
				for i := range count {
					ev := &events.Event{ID: events.ID{Ms: 1796137316244, Seq: uint64(i)}, Type: events.Join,
						User: fmt.Sprintf("user-%06d", i), Room: "room-42", At: 1796137316244, State: state}
					_ = q.Append(1, [][]byte{ev.JSON()})
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/count, "heap-B/event")
				b.ReportMetric(float64(q.Bytes())/count, "size-B/event")
				runtime.KeepAlive(q)
			}
		})
	}
}
