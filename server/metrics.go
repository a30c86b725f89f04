package server

import (
	"math"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The metrics here are a deliberately small Prometheus text-format writer:
// counters and histograms are plain atomics resolved once at start-up, so
// recording on the heartbeat path is one atomic add with no map lookup and
// no allocation. Label sets are fixed when a metric is created.

// counter is a monotonically increasing Prometheus counter.
type counter struct{ v atomic.Uint64 }

func (c *counter) Inc()         { c.v.Add(1) }
func (c *counter) Add(n uint64) { c.v.Add(n) }
func (c *counter) Load() uint64 { return c.v.Load() }

// histogram is a Prometheus histogram with fixed upper bounds in base units.
type histogram struct {
	bounds []float64
	counts []atomic.Uint64 // len(bounds)+1, the last is +Inf
	sumNs  atomic.Uint64   // sum in nanoseconds (observations are durations)
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// ObserveDuration records d. It does not allocate.
func (h *histogram) ObserveDuration(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(h.bounds, s) // first bound >= s
	h.counts[i].Add(1)
	if d > 0 {
		h.sumNs.Add(uint64(d))
	}
}

// latencyBuckets are upper bounds in seconds, 50µs .. 5s.
var latencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// metricFamily is one named metric with HELP and TYPE, rendered by write.
type metricFamily struct {
	name, help, typ string
	write           func(b []byte, name string) []byte
}

// registry renders metric families in registration order.
type registry struct {
	mu       sync.Mutex
	families []metricFamily
}

func (r *registry) add(name, typ, help string, write func(b []byte, name string) []byte) {
	r.mu.Lock()
	r.families = append(r.families, metricFamily{name: name, help: help, typ: typ, write: write})
	r.mu.Unlock()
}

// labeled is one label set of a family; labels is pre-rendered `{a="b"}`.
type labeled struct {
	labels string
	c      *counter
}

// counterVec registers a counter family with the given pre-built label sets
// and returns the counters in the same order.
func (r *registry) counterVec(name, help string, labelSets ...string) []*counter {
	if len(labelSets) == 0 {
		labelSets = []string{""}
	}
	ls := make([]labeled, len(labelSets))
	out := make([]*counter, len(labelSets))
	for i, l := range labelSets {
		ls[i] = labeled{labels: l, c: &counter{}}
		out[i] = ls[i].c
	}
	r.add(name, "counter", help, func(b []byte, name string) []byte {
		for _, l := range ls {
			b = appendSample(b, name, l.labels, float64(l.c.Load()))
		}
		return b
	})
	return out
}

func (r *registry) counter(name, help string) *counter { return r.counterVec(name, help)[0] }

// counterFunc registers a counter whose value is read at scrape time.
func (r *registry) counterFunc(name, help string, f func() float64) {
	r.add(name, "counter", help, func(b []byte, name string) []byte { return appendSample(b, name, "", f()) })
}

// gaugeFunc registers a gauge whose value is read at scrape time.
func (r *registry) gaugeFunc(name, help string, f func() float64) {
	r.add(name, "gauge", help, func(b []byte, name string) []byte { return appendSample(b, name, "", f()) })
}

// histogramVec registers a histogram family with fixed label sets.
func (r *registry) histogramVec(name, help string, bounds []float64, labelSets ...string) []*histogram {
	if len(labelSets) == 0 {
		labelSets = []string{""}
	}
	hs := make([]*histogram, len(labelSets))
	for i := range hs {
		hs[i] = newHistogram(bounds)
	}
	r.add(name, "histogram", help, func(b []byte, name string) []byte {
		for i, h := range hs {
			b = appendHistogram(b, name, labelSets[i], h.bounds, func(j int) uint64 { return h.counts[j].Load() }, float64(h.sumNs.Load())/1e9)
		}
		return b
	})
	return hs
}

// histogramFunc registers a histogram read at scrape time from cumulative-free
// bucket counts (len(bounds)+1, the last is +Inf) and a sum.
func (r *registry) histogramFunc(name, help string, bounds []float64, f func() (counts []uint64, sum float64)) {
	r.add(name, "histogram", help, func(b []byte, name string) []byte {
		counts, sum := f()
		return appendHistogram(b, name, "", bounds, func(j int) uint64 {
			if j < len(counts) {
				return counts[j]
			}
			return 0
		}, sum)
	})
}

func appendHistogram(b []byte, name, labels string, bounds []float64, count func(int) uint64, sum float64) []byte {
	inner := ""
	if labels != "" {
		inner = labels[1:len(labels)-1] + ","
	}
	var cum uint64
	for j, ub := range bounds {
		cum += count(j)
		b = appendSample(b, name+"_bucket", "{"+inner+`le="`+strconv.FormatFloat(ub, 'g', -1, 64)+`"}`, float64(cum))
	}
	cum += count(len(bounds))
	b = appendSample(b, name+"_bucket", "{"+inner+`le="+Inf"}`, float64(cum))
	b = appendSample(b, name+"_sum", labels, sum)
	return appendSample(b, name+"_count", labels, float64(cum))
}

func appendSample(b []byte, name, labels string, v float64) []byte {
	b = append(b, name...)
	b = append(b, labels...)
	b = append(b, ' ')
	switch {
	case math.IsInf(v, 1):
		b = append(b, "+Inf"...)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		b = strconv.AppendInt(b, int64(v), 10)
	default:
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	return append(b, '\n')
}

// writeTo renders every family in the Prometheus text format 0.0.4.
func (r *registry) appendText(b []byte) []byte {
	r.mu.Lock()
	fams := r.families
	r.mu.Unlock()
	for _, f := range fams {
		b = append(b, "# HELP "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = append(b, f.help...)
		b = append(b, "\n# TYPE "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = append(b, f.typ...)
		b = append(b, '\n')
		b = f.write(b, f.name)
	}
	return b
}

// registerRuntime adds Go runtime and process metrics an operator needs.
// Runtime figures come from runtime/metrics, which does not stop the world
// (runtime.ReadMemStats does); they are read at most once a second.
func (r *registry) registerRuntime(start time.Time) {
	var (
		mu      sync.Mutex
		last    time.Time
		samples = []metrics.Sample{
			{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/memory/classes/total:bytes"},
			{Name: "/gc/cycles/total:gc-cycles"},
			{Name: "/cpu/classes/gc/pause:cpu-seconds"},
			{Name: "/sched/goroutines:goroutines"},
		}
	)
	read := func(i int) float64 {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) > time.Second {
			metrics.Read(samples)
			last = time.Now()
		}
		switch v := samples[i].Value; v.Kind() {
		case metrics.KindUint64:
			return float64(v.Uint64())
		case metrics.KindFloat64:
			return v.Float64()
		}
		return 0
	}
	r.gaugeFunc("go_goroutines", "Number of goroutines that currently exist.", func() float64 { return read(4) })
	r.gaugeFunc("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and still in use.", func() float64 { return read(0) })
	r.gaugeFunc("go_memstats_sys_bytes", "Number of bytes obtained from the OS.", func() float64 { return read(1) })
	r.counterFunc("go_gc_cycles_total", "Number of completed GC cycles.", func() float64 { return read(2) })
	r.counterFunc("go_gc_pause_seconds_total", "Total GC stop-the-world pause time in seconds.", func() float64 {
		// The runtime counts pause CPU time as GOMAXPROCS x the pause.
		return read(3) / float64(runtime.GOMAXPROCS(0))
	})
	r.counterFunc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", func() float64 {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
			return 0
		}
		return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	})
	r.gaugeFunc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", func() float64 { return float64(start.Unix()) })
}
