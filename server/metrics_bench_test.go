package server

import (
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkMetricsScrape is one GET /metrics of a single node holding
// 100,000 sessions in 1,000 rooms (without a data dir), through the HTTP
// handler: what a Prometheus scrape costs the node.
func BenchmarkMetricsScrape(b *testing.B) {
	cfg := DefaultConfig()
	cfg.DataDir = ""
	cfg.HeartbeatMinGap = 0
	s, err := New(cfg, NewLogger(io.Discard, cfg, nil))
	if err != nil {
		b.Fatal(err)
	}
	s.state.Store(stateReady)
	now := time.Now().UnixMilli()
	for i := range 100_000 {
		s.heartbeat(trHTTP, []byte("user-"+strconv.Itoa(i)), []byte("room-"+strconv.Itoa(i%1000)), nil, nil, now)
	}
	if n := s.m.Stats().Sessions; n != 100_000 {
		b.Fatalf("%d sessions, want 100000", n)
	}
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("GET")
	ctx.Request.SetRequestURI("/metrics")
	s.handleHTTP(&ctx)
	if ctx.Response.StatusCode() != 200 {
		b.Fatalf("GET /metrics: %d", ctx.Response.StatusCode())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ctx.Response.Reset()
		s.handleHTTP(&ctx)
	}
	b.ReportMetric(float64(len(ctx.Response.Body())), "bytes/scrape")
}
