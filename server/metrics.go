package server

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Metrics are served by client_golang: each Server has its own
// prometheus.Registry (tests run many servers in one process), with the Go
// collector (runtime/metrics, no stop-the-world) and the process collector
// beside ours, written by promhttp.
//
// The heartbeat path does not touch the registry: it counts with plain
// atomics resolved at start-up (counter, histogram below), one atomic add,
// no map lookup, no allocation. The registry reads them at scrape time
// through collectors that turn them into const metrics; figures kept
// elsewhere (the table, the log, the bus) are read the same way.

// counter is a monotonically increasing count the hot paths add to.
type counter struct{ v atomic.Uint64 }

func (c *counter) Inc()         { c.v.Add(1) }
func (c *counter) Add(n uint64) { c.v.Add(n) }
func (c *counter) Load() uint64 { return c.v.Load() }

// histogram counts durations into fixed upper bounds in seconds.
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

// snapshot returns the per-bucket counts (the last is +Inf) and the sum in seconds.
func (h *histogram) snapshot() ([]uint64, float64) {
	counts := make([]uint64, len(h.counts))
	for i := range h.counts {
		counts[i] = h.counts[i].Load()
	}
	return counts, float64(h.sumNs.Load()) / 1e9
}

// latencyBuckets are upper bounds in seconds, 50µs .. 5s.
var latencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// registry is a Server's metrics: a prometheus.Registry, the helpers that
// register presenced's families on it, and the handler of GET /metrics. A
// registration mistake (a name registered twice, a bad name) is a broken
// invariant and panics.
type registry struct {
	prom    *prometheus.Registry
	handler fasthttp.RequestHandler
}

// newRegistry returns a registry holding the Go runtime and process
// collectors, and the two runtime counters presenced exported before them
// under names of its own. Errors of single collectors while serving are
// logged to log and the rest is served.
func newRegistry(log *slog.Logger) *registry {
	r := &registry{prom: prometheus.NewRegistry()}
	r.prom.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newGCCollector())
	r.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(r.prom, promhttp.HandlerOpts{
		ErrorLog:      promLogger{log},
		ErrorHandling: promhttp.ContinueOnError,
	}))
	return r
}

// serve answers GET /metrics in the format the scraper asked for (the text
// format by default).
func (r *registry) serve(ctx *fasthttp.RequestCtx) { r.handler(ctx) }

// promLogger is promhttp's error log on slog.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn("cannot collect a metric", "err", fmt.Sprint(v...))
}

// family is one metric family read at scrape time: collect sends its
// series, built with desc.
type family struct {
	desc    *prometheus.Desc
	collect func(desc *prometheus.Desc, ch chan<- prometheus.Metric)
}

func (f *family) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f *family) Collect(ch chan<- prometheus.Metric) { f.collect(f.desc, ch) }

func (r *registry) family(name, help string, labels []string, collect func(desc *prometheus.Desc, ch chan<- prometheus.Metric)) {
	r.prom.MustRegister(&family{desc: prometheus.NewDesc(name, help, labels, nil), collect: collect})
}

// counters registers a counter family with one series per set of label
// values (each in the order of labels) and returns their counters in that
// order. With no labels it has one series.
func (r *registry) counters(name, help string, labels []string, values ...[]string) []*counter {
	if len(labels) == 0 {
		values = [][]string{nil}
	}
	cs := make([]*counter, len(values))
	for i := range cs {
		cs[i] = &counter{}
	}
	r.family(name, help, labels, func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
		for i, c := range cs {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(c.Load()), values[i]...)
		}
	})
	return cs
}

func (r *registry) counter(name, help string) *counter { return r.counters(name, help, nil)[0] }

// counterVec registers a counter family with one label and returns the
// counters of the given label values in their order.
func (r *registry) counterVec(name, help, label string, values ...string) []*counter {
	vs := make([][]string, len(values))
	for i, v := range values {
		vs[i] = []string{v}
	}
	return r.counters(name, help, []string{label}, vs...)
}

// counterFunc registers a counter whose value is read at scrape time.
func (r *registry) counterFunc(name, help string, f func() float64) {
	r.prom.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// gaugeFunc registers a gauge whose value is read at scrape time.
func (r *registry) gaugeFunc(name, help string, f func() float64) {
	r.prom.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// counterFuncVec registers a counter family with one label whose series
// are read at scrape time: read calls emit once per series.
func (r *registry) counterFuncVec(name, help, label string, read func(emit func(value string, v float64))) {
	r.funcVec(name, help, label, prometheus.CounterValue, read)
}

// gaugeFuncVec is counterFuncVec for a gauge.
func (r *registry) gaugeFuncVec(name, help, label string, read func(emit func(value string, v float64))) {
	r.funcVec(name, help, label, prometheus.GaugeValue, read)
}

func (r *registry) funcVec(name, help, label string, typ prometheus.ValueType, read func(emit func(value string, v float64))) {
	r.family(name, help, []string{label}, func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
		read(func(value string, v float64) { ch <- prometheus.MustNewConstMetric(desc, typ, v, value) })
	})
}

// histogram registers a histogram of durations with fixed bounds (seconds).
func (r *registry) histogram(name, help string, bounds []float64) *histogram {
	h := newHistogram(bounds)
	r.histogramFunc(name, help, bounds, h.snapshot)
	return h
}

// histogramVec registers a histogram family with one label and returns
// the histograms of the given label values in their order.
func (r *registry) histogramVec(name, help string, bounds []float64, label string, values ...string) []*histogram {
	hs := make([]*histogram, len(values))
	for i := range hs {
		hs[i] = newHistogram(bounds)
	}
	r.family(name, help, []string{label}, func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
		for i, h := range hs {
			counts, sum := h.snapshot()
			ch <- constHistogram(desc, bounds, counts, sum, values[i])
		}
	})
	return hs
}

// histogramFunc registers a histogram read at scrape time: f returns the
// per-bucket counts (len(bounds)+1, the last is +Inf; missing ones are 0)
// and the sum.
func (r *registry) histogramFunc(name, help string, bounds []float64, f func() (counts []uint64, sum float64)) {
	r.family(name, help, nil, func(desc *prometheus.Desc, ch chan<- prometheus.Metric) {
		counts, sum := f()
		ch <- constHistogram(desc, bounds, counts, sum)
	})
}

// constHistogram turns per-bucket counts into Prometheus' cumulative ones.
func constHistogram(desc *prometheus.Desc, bounds []float64, counts []uint64, sum float64, labelValues ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bounds))
	var cum uint64
	for i, ub := range bounds {
		if i < len(counts) {
			cum += counts[i]
		}
		buckets[ub] = cum
	}
	if len(counts) > len(bounds) {
		cum += counts[len(bounds)]
	}
	return prometheus.MustNewConstHistogram(desc, cum, sum, buckets, labelValues...)
}

// gcCollector exports go_gc_cycles_total and go_gc_pause_seconds_total,
// which the Go collector does not (dashboards use them), from
// runtime/metrics: no stop-the-world, unlike runtime.ReadMemStats.
type gcCollector struct {
	cycles, pause *prometheus.Desc
	mu            sync.Mutex // guards samples
	samples       []metrics.Sample
}

func newGCCollector() *gcCollector {
	return &gcCollector{
		cycles:  prometheus.NewDesc("go_gc_cycles_total", "Number of completed GC cycles.", nil, nil),
		pause:   prometheus.NewDesc("go_gc_pause_seconds_total", "Total GC stop-the-world pause time in seconds.", nil, nil),
		samples: []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/pause:cpu-seconds"}},
	}
}

func (c *gcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.cycles; ch <- c.pause }

func (c *gcCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	metrics.Read(c.samples)
	s := slices.Clone(c.samples)
	c.mu.Unlock()
	value := func(s metrics.Sample) float64 {
		switch v := s.Value; v.Kind() {
		case metrics.KindUint64:
			return float64(v.Uint64())
		case metrics.KindFloat64:
			return v.Float64()
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.cycles, prometheus.CounterValue, value(s[0]))
	// The runtime counts pause CPU time as GOMAXPROCS x the pause.
	ch <- prometheus.MustNewConstMetric(c.pause, prometheus.CounterValue, value(s[1])/float64(runtime.GOMAXPROCS(0)))
}
