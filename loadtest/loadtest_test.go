package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

// testConfig is a small, quiet configuration for in-process targets.
func testConfig(t *testing.T) *Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Users, cfg.Rooms, cfg.Sockets, cfg.Conns = 1000, 10, 4, 8
	cfg.Quiet = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

func testPopulation(t *testing.T, cfg *Config) *population {
	t.Helper()
	pop, err := newPopulation(cfg, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pop
}

// TestOpenLoopStall: a target that stalls 300 ms once must not slow the
// sender (open loop: sent stays rate x duration) and the stall must show
// in the latency histogram.
func TestOpenLoopStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		n atomic.Int64
		// stallUntil (unix ns): every request waits until then, so the
		// stall stops the whole target.
		stallUntil atomic.Int64
	)
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if n.Add(1) == 100 {
			stallUntil.Store(time.Now().Add(300 * time.Millisecond).UnixNano())
		}
		if d := time.Until(time.Unix(0, stallUntil.Load())); d > 0 {
			time.Sleep(d)
		}
		ctx.SetBody(nullHeartbeatBody)
	}}
	go srv.Serve(ln)
	defer srv.Shutdown()

	cfg := testConfig(t)
	const rate, dur = 200.0, 2 * time.Second
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetNullHTTP, "http", false},
		addrs{http: ln.Addr().String()}, rate, dur, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if stallUntil.Load() == 0 {
		t.Fatal("the target never stalled")
	}
	want := int64(rate * dur.Seconds())
	if res.Sent < want*95/100 || res.Sent > want*105/100 {
		t.Errorf("sent %d, want about %d: the schedule must not wait for the stalled target", res.Sent, want)
	}
	if res.Answered+res.Lost+res.ErrorCount < res.Sent*95/100 {
		t.Errorf("answered %d + lost %d + errors %d of %d sent", res.Answered, res.Lost, res.ErrorCount, res.Sent)
	}
	if res.Latency.Max < 250 {
		t.Errorf("max latency %.1f ms, want >= ~300 ms (the stall)", res.Latency.Max)
	}
	if res.Latency.P99 < 150 {
		t.Errorf("p99 %.1f ms, want the stall to show (>= 150 ms)", res.Latency.P99)
	}
	if res.SendSpanS > dur.Seconds()+0.5 {
		t.Errorf("the schedule took %.2fs for %v: the sender slowed down", res.SendSpanS, dur)
	}
}

// halfAckUDP answers every other request datagram, ignoring the rest.
func halfAckUDP(t *testing.T) (addr string, received *atomic.Int64) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	received = new(atomic.Int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, wire.MaxDatagram)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if received.Add(1)%2 == 0 {
				continue
			}
			if m := nullReply(buf[:n]); m > 0 {
				_, _ = c.WriteToUDP(buf[:m], from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String(), received
}

// TestUDPLoss: a target that acks half the datagrams gives a loss of half
// of what it received, each lost request counted once.
func TestUDPLoss(t *testing.T) {
	addr, received := halfAckUDP(t)
	cfg := testConfig(t)
	cfg.AckTimeout = 200 * time.Millisecond
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", false},
		addrs{udp: addr}, 2000, time.Second, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 2000 {
		t.Errorf("sent %d, want 2000", res.Sent)
	}
	// The truth: of what reached the target, every other one was acked;
	// anything the kernel dropped before the target is lost too.
	wantLost := res.Sent - (received.Load()+1)/2
	if d := res.Lost - wantLost; d < -5 || d > 5 {
		t.Errorf("lost %d, want %d (target received %d of %d)", res.Lost, wantLost, received.Load(), res.Sent)
	}
	if res.LossPct < 45 || res.LossPct > 60 {
		t.Errorf("loss %.2f%%, want about 50%%", res.LossPct)
	}
	if res.Answered+res.Lost != res.Sent {
		t.Errorf("answered %d + lost %d != sent %d", res.Answered, res.Lost, res.Sent)
	}
	if res.Late != 0 {
		t.Errorf("late answers %d, want 0", res.Late)
	}
}

// TestUDPStall: a UDP target that stops reading for 300 ms once; its
// socket buffer holds the datagrams, so they are answered late, and the
// latency shows it while the sender keeps its rate.
func TestUDPStall(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, wire.MaxDatagram)
		for i := 0; ; i++ {
			if i == 200 {
				time.Sleep(300 * time.Millisecond)
			}
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if m := nullReply(buf[:n]); m > 0 {
				_, _ = c.WriteToUDP(buf[:m], from)
			}
		}
	}()
	defer func() { c.Close(); <-done }()
	cfg := testConfig(t)
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", false},
		addrs{udp: c.LocalAddr().String()}, 500, 2*time.Second, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 1000 {
		t.Errorf("sent %d, want 1000", res.Sent)
	}
	if res.Latency.Max < 250 || res.Latency.P99 < 150 {
		t.Errorf("max %.1f ms p99 %.1f ms, want the 300 ms stall to show", res.Latency.Max, res.Latency.P99)
	}
	if res.LossPct > 5 {
		t.Errorf("loss %.2f%%: the socket buffer should have held the datagrams", res.LossPct)
	}
}

// TestBaselines drives each in-process null target briefly: everything
// sent is answered.
func TestBaselines(t *testing.T) {
	cfg := testConfig(t)
	pop := testPopulation(t, cfg)
	for _, tc := range []struct {
		target, transport string
		start             func() (string, func(), error)
	}{
		{TargetNullUDP, "udp", startNullUDP},
		{TargetRawUDP, "udp", startRawUDP},
		{TargetNullHTTP, "http", startNullHTTP},
		{TargetNullHTTP, "http-batch", startNullHTTP},
	} {
		t.Run(tc.target+"/"+tc.transport, func(t *testing.T) {
			addr, stop, err := tc.start()
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			cfg := *cfg
			cfg.Batch = 10
			res, err := runStep(context.Background(), &cfg, pop, plan{tc.target, tc.transport, false},
				addrs{udp: addr, http: addr}, 1000, 500*time.Millisecond, "test", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 500 || res.Answered < 495 || res.ErrorCount != 0 {
				t.Errorf("sent %d answered %d lost %d errors %v, want 500 answered", res.Sent, res.Answered, res.Lost, res.Errors)
			}
			if res.Latency.Count == 0 || res.Latency.P50 <= 0 {
				t.Errorf("no latency: %+v", res.Latency)
			}
		})
	}
}

// TestRedisBaselines starts its own redis-server when one is on PATH.
func TestRedisBaselines(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not on PATH: .ci/test.sh installs it")
	}
	rs, err := startRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.stop()
	cfg := testConfig(t)
	pop := testPopulation(t, cfg)
	for _, target := range []string{TargetRedisSetex, TargetRedisPipelined} {
		res, err := runStep(context.Background(), cfg, pop, plan{target, transportRedis, false},
			addrs{redis: rs.addr}, 1000, 500*time.Millisecond, "test", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 500 || res.Answered < 495 || res.ErrorCount != 0 {
			t.Errorf("%s: sent %d answered %d lost %d errors %v", target, res.Sent, res.Answered, res.Lost, res.Errors)
		}
	}
}

var pointsRE = regexp.MustCompile(`<polyline [^>]*points="([0-9.]+,[0-9.]+ )+[0-9.]+,[0-9.]+"`)

// TestReports runs Main end to end, with a sweep, and checks the text,
// JSON and HTML reports.
func TestReports(t *testing.T) {
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	var stdout, stderr bytes.Buffer
	code := Main([]string{"--target", "null-udp", "--users", "1000", "--sockets", "2",
		"--sweep", "--rate", "200", "--sweep-factor", "2", "--step-duration", "1100ms", "--duration", "3s",
		"--target-p99", "1s", "--max-loss", "5", "--json", jsonPath, "--html", htmlPath}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	out := stdout.String()
	for _, want := range []string{"== null-udp over udp ==", "highest sustainable rate:", "at a 60 s interval this node carries"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "p99") {
		t.Errorf("no progress line on stderr:\n%s", &stderr)
	}

	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || len(rep.Runs[0].Steps) < 2 || rep.Runs[0].Best < 0 || rep.Runs[0].BestRate < 200 {
		t.Fatalf("JSON report: %+v", rep.Runs)
	}
	s := rep.Runs[0].Steps[0]
	if s.Sent == 0 || s.Latency.P99 <= 0 || len(s.Latency.Curve) == 0 || len(s.Timeline) == 0 {
		t.Errorf("JSON step lacks data: %+v", s)
	}

	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(page))
	dec.Strict, dec.AutoClose, dec.Entity = false, xml.HTMLAutoClose, xml.HTMLEntity
	svgs := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("HTML does not parse: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "svg" {
			svgs++
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "script" {
			t.Error("HTML has a script")
		}
	}
	if svgs < 3 {
		t.Errorf("HTML has %d <svg> plots, want 3", svgs)
	}
	if n := len(pointsRE.FindAll(page, -1)); n < 3 {
		t.Errorf("HTML has %d polylines with points, want >= 3", n)
	}
	if bytes.Contains(page, []byte("http://")) && bytes.Count(page, []byte("http://")) != bytes.Count(page, []byte("http://www.w3.org/")) {
		t.Error("HTML refers to the network")
	}
}

// TestBadFlags: bad usage exits 2 with a message naming the flag.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--rate", "-1"}, "--rate"},
		{[]string{"--rate", "abc"}, "-rate"},
		{[]string{"--transport", "carrier-pigeon"}, "--transport"},
		{[]string{"--target", "nginx"}, "--target"},
		{[]string{"--room-dist", "pareto"}, "--room-dist"},
		{[]string{"--users", "0"}, "--users"},
		{[]string{"--batch", "0"}, "--batch"},
		{[]string{"--sockets", "0"}, "--sockets"},
		{[]string{"--conns", "100000"}, "--conns"},
		{[]string{"--duration", "1ms"}, "--duration"},
		{[]string{"--ack-timeout", "0s"}, "--ack-timeout"},
		{[]string{"--sweep-factor", "1"}, "--sweep-factor"},
		{[]string{"--max-loss", "150"}, "--max-loss"},
		{[]string{"--jitter", "2"}, "--jitter"},
		{[]string{"--target-p99", "0s"}, "--target-p99"},
		{[]string{"--target", "null-udp", "--transport", "http"}, "--transport"},
		{[]string{"--baselines=null-udp,memcached"}, "--baselines"},
		{[]string{"--sweep", "--duration", "1s", "--step-duration", "5s"}, "--duration"},
		{[]string{"--secret-file", "/nonexistent/keys"}, "--secret-file"},
		{[]string{"--flood-rate", "-2"}, "--flood-rate"},
		{[]string{"--flood-rate", "fast"}, "-flood-rate"},
		{[]string{"--flood-rate", "-1", "--target", "redis-setex"}, "--flood-rate"},
		{[]string{"--flood-sockets", "0"}, "--flood-sockets"},
		{[]string{"--flood-source", "localhost"}, "--flood-source"},
		{[]string{"--flood-kind", "evil"}, "--flood-kind"},
		{[]string{"--source-ip", "127.0.0"}, "--source-ip"},
		{[]string{"--source-ip", "127.0.0.1,10.0.0.0/33"}, "--source-ip"},
		{[]string{"--compare-flood"}, "--compare-flood"},
		{[]string{"--compare-flood", "--flood-rate", "-1", "--sweep"}, "--compare-flood"},
		{[]string{"--check-online", "--target", "null-udp"}, "--check-online"},
		{[]string{"--flat-out", "--sweep"}, "--sweep"},
		{[]string{"--no-ack", "--transport", "http"}, "--transport"},
		{[]string{"--no-ack", "--flood-rate", "-1", "--compare-flood"}, "--compare-flood"},
		{[]string{"--serve", "nginx"}, "--serve"},
		{[]string{"--cpu", "0-"}, "--cpu"},
		{[]string{"--target-metrics", "127.0.0.1:7070/metrics"}, "--target-metrics"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"stray"}, "stray"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Main(tc.args, &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		if !strings.Contains(stderr.String(), tc.flag) {
			t.Errorf("%v: message does not name %s: %q", tc.args, tc.flag, stderr.String())
		}
	}
}

func TestNullReplyDecodes(t *testing.T) {
	for _, tc := range []struct {
		user, tok string
		timing    bool
	}{
		{"a", "", false}, // 13-byte request: timing would not fit
		{"alice", "", true},
		{"bob", "k1.1700000000.u.81b9xRN4a1x6vABftt7WIDnPsZI_dEqsp_kPBeFZOmw", true},
	} {
		req, err := wire.AppendRequest(nil, 0xdeadbeef, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte(tc.user), Token: []byte(tc.tok)}})
		if err != nil {
			t.Fatal(err)
		}
		size := len(req)
		n := nullReply(req)
		var rep wire.Reply
		if err := rep.Decode(req[:n]); err != nil {
			t.Fatalf("%s: reply does not decode: %v", tc.user, err)
		}
		if rep.Seq != 0xdeadbeef || rep.HasTiming != tc.timing || len(rep.Statuses()) != 1 || n > size {
			t.Errorf("%s: reply %+v len %d (request %d)", tc.user, rep, n, size)
		}
	}
	if nullReply([]byte{0x50, 1, 0, 1, 0, 0, 0, 1, 1, 1, 'a', 0, 0}) != 0 {
		t.Error("replied to a request without the ack flag")
	}
}

func TestPacer(t *testing.T) {
	ps := newPacers(3, 1000, 10, 0.5)
	var total int64
	last := int64(-1 << 62)
	for k := range ps[0].n {
		at := ps[0].at(k)
		if at < last {
			t.Errorf("job %d due %d before job %d (%d): jitter broke the order", k, at, k-1, last)
		}
		last = at
	}
	for _, p := range ps {
		total += p.n
	}
	if total != 10 || ps[0].n != 4 || ps[2].n != 3 {
		t.Errorf("jobs split %d %d %d", ps[0].n, ps[1].n, ps[2].n)
	}
	if got := ps[0].at(999) / 1e6; got < 2990 || got > 3000 {
		t.Errorf("job 999 of sender 0 at 3 jobs/ms due at %d ms, want ~2997", got)
	}
}

func TestPopulationTokens(t *testing.T) {
	kr, err := token.ParseKeyring([]byte("k1 0123456789abcdef0123456789abcdef\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.RoomDist = "zipf"
	pop, err := newPopulation(cfg, kr, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := pop.buildUDP(); err != nil {
		t.Fatal(err)
	}
	pop.buildJSON()
	var d wire.Datagram
	for _, i := range []int{0, 1, cfg.Users - 1} {
		if err := kr.Verify([]byte(pop.toks[i]), []byte(pop.users[i]), []byte(pop.rooms[i]), time.Now().Unix()); err != nil {
			t.Errorf("user %d: token does not verify: %v", i, err)
		}
		if err := d.Decode(pop.udp[i]); err != nil || !d.Ack || string(d.Items()[0].Token) != pop.toks[i] {
			t.Errorf("user %d: datagram: %v", i, err)
		}
		var body struct{ User, Room, Token string }
		if err := json.Unmarshal(pop.json[i], &body); err != nil || body.Token != pop.toks[i] || body.User != pop.users[i] {
			t.Errorf("user %d: JSON %s: %v", i, pop.json[i], err)
		}
	}
}
