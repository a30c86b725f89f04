package loadtest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/wire"
)

// TestUDPBatchAllMatched: the batched sender and receiver against the raw
// recvmmsg/sendmmsg target, paced and flat out: every datagram sent is
// either answered or lost, each once, and paced on loopback all are
// answered.
func TestUDPBatchAllMatched(t *testing.T) {
	addr, stop, err := startRawUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg := testConfig(t)
	pop := testPopulation(t, cfg)
	res, err := runStep(context.Background(), cfg, pop, plan{TargetPresenced, "udp", false}, addrs{udp: addr}, 20000, 500*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 10000 || res.Answered != res.Sent || res.Lost != 0 || res.Late != 0 || res.ErrorCount != 0 {
		t.Errorf("paced: sent %d answered %d lost %d late %d errors %v, want 10000 sent, all answered", res.Sent, res.Answered, res.Lost, res.Late, res.Errors)
	}

	flat := *cfg
	flat.FlatOut = true
	res, err = runStep(context.Background(), &flat, pop, plan{TargetPresenced, "udp", false}, addrs{udp: addr}, 1000, 300*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent <= 300 {
		t.Errorf("flat out sent %d in 300 ms, no more than the --rate of 1000/s would", res.Sent)
	}
	if res.Answered == 0 || res.Answered+res.Lost != res.Sent || res.Late != 0 {
		t.Errorf("flat out: sent %d answered %d lost %d late %d, want every datagram answered or lost once", res.Sent, res.Answered, res.Lost, res.Late)
	}
	if res.Latency.Count != res.Answered {
		t.Errorf("latency recorded %d times for %d answers", res.Latency.Count, res.Answered)
	}
}

// shuffleAckUDP reads up to 16 datagrams at a time, then acks them in
// reverse order, each twice.
func shuffleAckUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held [][]byte
		var from *net.UDPAddr
		for {
			buf := make([]byte, wire.MaxDatagram)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			n, a, err := c.ReadFromUDP(buf)
			if err == nil {
				from = a
				if m := nullReply(buf[:n]); m > 0 {
					held = append(held, buf[:m])
				}
			} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				return
			}
			if len(held) >= 16 || err != nil && len(held) > 0 {
				for i := len(held) - 1; i >= 0; i-- {
					_, _ = c.WriteToUDP(held[i], from)
					_, _ = c.WriteToUDP(held[i], from)
				}
				held = held[:0]
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// TestUDPBatchMatchesBySeq: acks out of order and duplicated are matched
// by seq: each request answered once, every duplicate counted late.
func TestUDPBatchMatchesBySeq(t *testing.T) {
	addr := shuffleAckUDP(t)
	cfg := testConfig(t)
	cfg.Sockets = 1
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", false}, addrs{udp: addr}, 4000, 500*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 2000 || res.Answered != 2000 || res.Lost != 0 {
		t.Errorf("sent %d answered %d lost %d, want 2000 answered", res.Sent, res.Answered, res.Lost)
	}
	if res.Late != res.Answered {
		t.Errorf("late %d, want one duplicate per answer (%d)", res.Late, res.Answered)
	}
}

// TestServeAndServerSide: a do-nothing target run by --serve exports
// presenced's counters, and a step reads the server's intake from them:
// without acks it is what the generator sent.
func TestServeAndServerSide(t *testing.T) {
	udpAddr := "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	httpAddr := "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	srvCfg := DefaultConfig()
	srvCfg.Serve, srvCfg.UDPAddr, srvCfg.HTTPAddr = TargetNullUDP, udpAddr, httpAddr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- serve(ctx, &srvCfg, io.Discard, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d", code)
		}
	})
	url := "http://" + httpAddr + "/metrics"
	testkit.EventuallyErr(t, 5*time.Second, "--serve to answer /metrics", func() error {
		_, err := scrapeMetrics(url)
		return err
	})

	cfg := testConfig(t)
	cfg.NoAck, cfg.TargetMetrics = true, url
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", false}, addrs{udp: udpAddr}, 2000, 500*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Server
	if s == nil || s.Error != "" {
		t.Fatalf("no server-side figures: %+v", s)
	}
	if res.Sent != 1000 || s.Heartbeats+s.ServerQueueDrops != res.Sent {
		t.Errorf("sent %d, server took in %d and its queue dropped %d", res.Sent, s.Heartbeats, s.ServerQueueDrops)
	}
	if s.RepliesPerS != 0 || res.Answered != 0 {
		t.Errorf("--no-ack: %v replies/s, %d answered, want none", s.RepliesPerS, res.Answered)
	}
	if s.DatagramsPerS <= 0 {
		t.Errorf("datagrams/s %v", s.DatagramsPerS)
	}
	// The target's page is the Prometheus text format with presenced's
	// names and types.
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"# TYPE presenced_udp_datagrams_total counter\n", "# TYPE presenced_heartbeats_total counter\n", "# TYPE presenced_udp_replies_total counter\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics of --serve lacks %q:\n%s", want, body)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(`# HELP presenced_heartbeats_total x
# TYPE presenced_heartbeats_total counter
presenced_heartbeats_total{transport="udp",outcome="ok"} 10
presenced_heartbeats_total{transport="http",outcome="bad_token"} 2.5
presenced_udp_datagrams_total 7
presenced_udp_datagrams_total_other 99
presenced_wal_records_total 3e3
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{metricHeartbeats: 12.5, metricDatagrams: 7, metricWALRecords: 3000}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if len(m) != len(want) {
		t.Errorf("parsed %v, want only %v", m, want)
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string][]int{"0": {0}, "0,2": {0, 2}, "1-3": {1, 2, 3}, "0, 4-5": {0, 4, 5}} {
		set, err := parseCPUList(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if set.Count() != len(want) {
			t.Errorf("%q: %d CPUs, want %v", in, set.Count(), want)
		}
		for _, c := range want {
			if !set.IsSet(c) {
				t.Errorf("%q: CPU %d not set", in, c)
			}
		}
	}
	for _, bad := range []string{"x", "3-1", "-1", "1-", "2048"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestStartPinned: a child started by --cpu's mechanism runs on those
// CPUs only, and this process stays unpinned.
func TestStartPinned(t *testing.T) {
	set, _ := parseCPUList("0")
	cmd := exec.Command("grep", "Cpus_allowed_list", "/proc/self/status")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startPinned(set, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); !strings.HasSuffix(got, "\t0") {
		t.Errorf("child: %q, want Cpus_allowed_list 0", got)
	}
}

func TestLimitOf(t *testing.T) {
	cfg := testConfig(t)
	for _, tc := range []struct {
		name string
		s    StepResult
		want string
	}{
		{"idle", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 1, LoadgenCPUPct: 20, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.2, CPUCores: 1}}, limitNone},
		{"generator busy", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 1, LoadgenCPUPct: 95, LoadgenCores: 1}, limitGenerator},
		{"generator behind", StepResult{OfferedRate: 1000, SentPerS: 500, Sent: 500, SendSpanS: 1, LoadgenCPUPct: 30, LoadgenCores: 1}, limitGenerator + " (fell behind its schedule)"},
		{"server busy", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 2, LoadgenCPUPct: 30, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 1.9, CPUCores: 1}}, limitServer},
		{"loss", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 1, LossPct: 5, LoadgenCPUPct: 30, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.3, CPUCores: 1}}, limitLoss},
		{"server starved", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 1, LossPct: 5, LoadgenCPUPct: 30, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.4, CPUCores: 1, RunqueueWaitS: 0.5, ServerQueueDrops: 50}}, limitServer + " (40% busy, 50% waiting for a shared core)"},
		{"server dropped, idle", StepResult{OfferedRate: 1000, SentPerS: 1000, Sent: 1000, SendSpanS: 1, LossPct: 5, LoadgenCPUPct: 30, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.4, CPUCores: 1, ServerQueueDrops: 50}}, limitServer},
	} {
		if got := limitOf(&tc.s, cfg); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	flat := *cfg
	flat.FlatOut = true
	for _, tc := range []struct {
		name string
		s    StepResult
		want string
	}{
		{"server kept up", StepResult{Sent: 1000, SendSpanS: 1, LoadgenCPUPct: 100, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.7, CPUCores: 1}}, limitGenerator},
		{"server queue overflowed", StepResult{Sent: 1000, SendSpanS: 1, LoadgenCPUPct: 100, LoadgenCores: 1,
			Server: &ServerSide{CPUSeconds: 0.9, CPUCores: 1, ServerQueueDrops: 300, KernelDrops: 300}}, limitServer},
		{"acks lost", StepResult{Sent: 1000, SendSpanS: 1, LossPct: 3, LoadgenCPUPct: 100, LoadgenCores: 1}, limitLoss},
	} {
		if got := limitOf(&tc.s, &flat); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
