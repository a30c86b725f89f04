package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/wire"
)

// sourceRecorder is a UDP target on 127.0.0.1 that answers every request
// asking for an ack (like null-udp) and records, per source IP, how many
// datagrams came from the flood user, from simulated users, and how many
// did not decode.
type sourceRecorder struct {
	addr string
	mu   sync.Mutex
	by   map[string]*sourceCount
}

type sourceCount struct{ flood, users, garbage int }

func newSourceRecorder(t *testing.T) *sourceRecorder {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(8 << 20)
	r := &sourceRecorder{addr: c.LocalAddr().String(), by: map[string]*sourceCount{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, wire.MaxDatagram+1)
		var d wire.Datagram
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				if strings.Contains(err.Error(), "closed") {
					return
				}
				continue
			}
			r.mu.Lock()
			sc := r.by[from.IP.String()]
			if sc == nil {
				sc = &sourceCount{}
				r.by[from.IP.String()] = sc
			}
			switch {
			case d.Decode(buf[:n]) != nil:
				sc.garbage++
			case string(d.Items()[0].User) == floodUser:
				sc.flood++
			default:
				sc.users++
			}
			r.mu.Unlock()
			if m := nullReply(buf[:n]); m > 0 {
				_, _ = c.WriteToUDP(buf[:m], from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return r
}

func (r *sourceRecorder) snapshot() map[string]sourceCount {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]sourceCount{}
	for k, v := range r.by {
		out[k] = *v
	}
	return out
}

func floodConfig(t *testing.T, rate float64, kind, sourceIP string) *Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Users, cfg.Rooms, cfg.Sockets = 200, 10, 2
	cfg.Quiet = true
	cfg.AckTimeout = 500 * time.Millisecond
	cfg.FloodRate, cfg.FloodKind, cfg.SourceIP = rate, kind, sourceIP
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// TestFloodSources: the flood's datagrams leave from --flood-source
// (127.0.0.2), the users' from the kernel's choice (127.0.0.1) or from
// --source-ip; and the flood is not counted in the users' figures.
func TestFloodSources(t *testing.T) {
	for _, tc := range []struct {
		name, sourceIP string
		userIPs        []string
	}{
		{"default", "", []string{"127.0.0.1"}},
		{"source-ip list", "127.0.0.3,127.0.0.4", []string{"127.0.0.3", "127.0.0.4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newSourceRecorder(t)
			cfg := floodConfig(t, 2000, "valid", tc.sourceIP)
			res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", true},
				addrs{udp: rec.addr}, 400, 500*time.Millisecond, "test", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got := rec.snapshot()
			flood, users := 0, 0
			for ip, c := range got {
				if c.flood > 0 && ip != defaultFloodSource {
					t.Errorf("%d flood datagrams from %s, want all from %s", c.flood, ip, defaultFloodSource)
				}
				if c.users > 0 && !oneOf(ip, tc.userIPs...) {
					t.Errorf("%d user datagrams from %s, want them from %v", c.users, ip, tc.userIPs)
				}
				if c.garbage > 0 {
					t.Errorf("%d undecodable datagrams from %s", c.garbage, ip)
				}
				flood += c.flood
				users += c.users
			}
			for _, ip := range tc.userIPs {
				if got[ip].users == 0 {
					t.Errorf("no user datagrams from %s: %v", ip, got)
				}
			}
			if got[defaultFloodSource].flood == 0 {
				t.Fatalf("no flood datagrams from %s: %v", defaultFloodSource, got)
			}
			// The users' figures: exactly their schedule, nothing of the flood.
			if res.Sent != 200 || int64(users) > res.Sent {
				t.Errorf("users: sent %d, target saw %d user datagrams; want 200 (flood %d must not count)", res.Sent, users, flood)
			}
			if res.Answered+res.Lost != res.Sent || res.Latency.Count != res.Answered || res.Late != 0 {
				t.Errorf("users: answered %d + lost %d != sent %d, latency count %d, late %d",
					res.Answered, res.Lost, res.Sent, res.Latency.Count, res.Late)
			}
			f := res.Flood
			if f == nil {
				t.Fatal("no flood result")
			}
			if f.Sent != 1000 || int64(flood) > f.Sent || int64(flood) < f.Sent*9/10 {
				t.Errorf("flood: sent %d (want 1000 = 2000/s x 0.5s), target saw %d", f.Sent, flood)
			}
			if f.Replies == 0 || f.Replies > f.Sent || f.ReplyStatuses["ok"] != f.Replies || f.SentPerS <= 0 {
				t.Errorf("flood result: %+v", f)
			}
		})
	}
}

// TestFloodGarbageAsFastAsItCan: --flood-rate -1 --flood-kind garbage
// sends undecodable datagrams, from --flood-source only, for the step.
func TestFloodGarbageAsFastAsItCan(t *testing.T) {
	rec := newSourceRecorder(t)
	cfg := floodConfig(t, -1, "garbage", "")
	start := time.Now()
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "udp", true},
		addrs{udp: rec.addr}, 400, 300*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the step took %v: the flood did not stop with it", d)
	}
	got := rec.snapshot()
	for ip, c := range got {
		if c.garbage > 0 && ip != defaultFloodSource || c.flood > 0 {
			t.Errorf("from %s: %+v", ip, c)
		}
	}
	f := res.Flood
	if f == nil || f.Sent < 100 || got[defaultFloodSource].garbage == 0 || f.Replies != 0 || f.OfferedRate != -1 {
		t.Errorf("flood %+v, target saw %v", f, got)
	}
	if res.Sent != 120 || res.Answered+res.Lost != res.Sent {
		t.Errorf("users: sent %d answered %d lost %d, want 120 sent", res.Sent, res.Answered, res.Lost)
	}
}

// TestHTTPSourceIP: with --source-ip, HTTP connections bind it.
func TestHTTPSourceIP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	from := map[string]int{}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		mu.Lock()
		from[ctx.RemoteIP().String()]++
		mu.Unlock()
		ctx.SetBody(nullHeartbeatBody)
	}}
	go srv.Serve(ln)
	defer srv.Shutdown()
	cfg := floodConfig(t, 0, "valid", "127.0.0.5")
	cfg.Conns = 4
	res, err := runStep(context.Background(), cfg, testPopulation(t, cfg), plan{TargetPresenced, "http", false},
		addrs{http: ln.Addr().String()}, 200, 500*time.Millisecond, "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(from) != 1 || from["127.0.0.5"] == 0 || res.Answered == 0 {
		t.Errorf("requests by source %v, answered %d: want all from 127.0.0.5", from, res.Answered)
	}
}

// fakeStatus is POST /v1/status that reports every user online except
// those in offline, leaves out those in missing, and wants token (if set)
// as a bearer token. It records each request's user count.
func fakeStatus(t *testing.T, token string, offline, missing map[string]bool) (addr string, sizes func() []int) {
	t.Helper()
	var mu sync.Mutex
	var got []int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/status" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		var req struct{ Users []string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, len(req.Users))
		mu.Unlock()
		if len(req.Users) > statusChunk {
			http.Error(w, `{"error":"too many users"}`, http.StatusRequestEntityTooLarge)
			return
		}
		type us struct {
			User   string `json:"user"`
			Online bool   `json:"online"`
		}
		var out struct {
			Users []us `json:"users"`
		}
		for _, u := range req.Users {
			if !missing[u] {
				out.Users = append(out.Users, us{u, !offline[u]})
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), got...)
	}
}

// TestCheckOnline counts offline users, in chunks of at most 1000, with
// the bearer token.
func TestCheckOnline(t *testing.T) {
	addr, sizes := fakeStatus(t, "sekret",
		map[string]bool{"lt-3": true, "lt-1500": true, "lt-2499": true},
		map[string]bool{"lt-2000": true})
	cfg := DefaultConfig()
	cfg.Users, cfg.HTTPAddr, cfg.APIToken = 2500, addr, "sekret"
	pop := testPopulation(t, &cfg)
	c := checkOnline(context.Background(), &cfg, pop, 7500)
	if c.Error != "" || c.Users != 2500 || c.Offline != 4 || c.Online != 2496 || c.Requests != 3 || c.NotReached != 0 {
		t.Errorf("check: %+v, want 4 offline of 2500 in 3 requests", c)
	}
	if s := sizes(); len(s) != 3 || s[0] != 1000 || s[1] != 1000 || s[2] != 500 {
		t.Errorf("request sizes %v, want [1000 1000 500]", s)
	}
	cfg.APIToken = "wrong"
	if c := checkOnline(context.Background(), &cfg, pop, 2500); c.Error == "" || !strings.Contains(c.Error, "401") {
		t.Errorf("with a wrong token: %+v, want a 401 error", c)
	}
}

// TestCheckOnlineShortRun: a run that sent fewer heartbeats than there are
// users (shorter than --interval) checks only the users it reached, so the
// others are not reported offline (they were reported as lost).
func TestCheckOnlineShortRun(t *testing.T) {
	addr, _ := fakeStatus(t, "", nil, nil)
	cfg := DefaultConfig()
	cfg.Users, cfg.HTTPAddr = 2500, addr
	pop := testPopulation(t, &cfg)
	// The fake answers online for every user it is asked about: only the
	// 300 users of jobs 0..299 are asked.
	c := checkOnline(context.Background(), &cfg, pop, 300)
	if c.Error != "" || c.Users != 300 || c.Online != 300 || c.Offline != 0 || c.NotReached != 2200 {
		t.Fatalf("check: %+v, want 300 reached and online, 2200 not reached", c)
	}
	var b strings.Builder
	writeOnlineText(&b, c)
	if !strings.Contains(b.String(), "0 of 300 reached") || !strings.Contains(b.String(), "2200 users not reached") {
		t.Errorf("report: %s", b.String())
	}
}

// TestNotOKSaysWhy: a step that is not sustainable says which limit it
// broke, in the text and HTML reports.
func TestNotOKSaysWhy(t *testing.T) {
	cfg := DefaultConfig()
	s := StepResult{Sent: 1000, Answered: 900, LossPct: 10, Latency: Latency{Count: 900, P99: 2 * float64(cfg.TargetP99) / 1e6}}
	why := s.notOK(&cfg)
	if !strings.Contains(why, "p99") || !strings.Contains(why, "--target-p99") || !strings.Contains(why, "--max-loss") {
		t.Fatalf("notOK = %q, want the p99 and the loss limits named", why)
	}
	s.NotOK = why
	if got := okHTML(s); got != "NO: "+why {
		t.Errorf("HTML ok cell %q", got)
	}
	var b strings.Builder
	writeStepText(&b, &s)
	if !strings.Contains(b.String(), "not ok: "+why) {
		t.Errorf("text report lacks the reason:\n%s", b.String())
	}
	if why := (&StepResult{}).notOK(&cfg); why != "nothing was sent" {
		t.Errorf("empty step: %q", why)
	}
	good := StepResult{Sent: 10, Answered: 10, Latency: Latency{Count: 10, P99: 0.1}}
	if why := good.notOK(&cfg); why != "" {
		t.Errorf("a good step: %q", why)
	}
}

// TestCompareFlood runs Main end to end: --compare-flood runs the target
// without and with the flood and reports both p99s, their ratio and the
// offline counts, in text and JSON.
func TestCompareFlood(t *testing.T) {
	udpAddr, stop, err := startNullUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	httpAddr, _ := fakeStatus(t, "tok", map[string]bool{"lt-7": true}, nil)
	jsonPath := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr bytes.Buffer
	code := Main([]string{"--udp-addr", udpAddr, "--http-addr", httpAddr, "--api-token", "tok",
		"--users", "300", "--interval", "1s", "--duration", "600ms", "--sockets", "2",
		"--flood-rate", "3000", "--compare-flood", "--check-online", "--quiet", "--json", jsonPath}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	out := stdout.String()
	for _, want := range []string{"== presenced over udp ==", "== presenced over udp, with a valid flood (3000/s) from 127.0.0.2 ==",
		"== flood comparison ==", "p99 with flood / p99 without = ",
		// 600 ms of a 1 s interval reach 180 of the 300 users (lt-7 among
		// them); the other 120 are not checked, so not reported offline.
		"users offline at end: 1 of 180 reached", "120 users not reached (the run was shorter than --interval)",
		"users offline at end: without flood 1, with flood 1, of 180 reached", "not in the figures above"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "== ratios ==") {
		t.Errorf("the flooded run was compared as a baseline:\n%s", out)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	c := rep.FloodComparison
	if c == nil || len(rep.Runs) != 2 {
		t.Fatalf("JSON: comparison %+v, %d runs", c, len(rep.Runs))
	}
	if c.P99WithoutMs <= 0 || c.P99WithMs <= 0 || c.P99Ratio <= 0 || c.OfflineWithout != 1 || c.OfflineWith != 1 || c.Users != 180 {
		t.Errorf("JSON comparison: %+v", c)
	}
	if c.Flood == nil || c.Flood.Sent == 0 || c.Flood.Source != "127.0.0.2" {
		t.Errorf("JSON comparison flood: %+v", c.Flood)
	}
	r0, r1 := rep.Runs[0], rep.Runs[1]
	if r0.Flood || !r1.Flood || r0.Steps[0].Flood != nil || r1.Steps[0].Flood == nil {
		t.Errorf("runs: first flood=%v (%+v), second flood=%v (%+v)", r0.Flood, r0.Steps[0].Flood, r1.Flood, r1.Steps[0].Flood)
	}
	if r0.Online == nil || r1.Online == nil || r1.Online.Offline != 1 {
		t.Errorf("online checks: %+v %+v", r0.Online, r1.Online)
	}
	// The users' figures of the flooded run are their own: 300 users at 1s
	// for 0.6s is 180 heartbeats, whatever the flood sent.
	if s := r1.Steps[0]; s.Sent != 180 {
		t.Errorf("flooded run: users sent %d, want 180 (flood sent %d)", s.Sent, s.Flood.Sent)
	}
}

func TestParseSourceIPs(t *testing.T) {
	ips, err := parseSourceIPs("127.0.1.0/30, 10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if strings.Join(got, ",") != "127.0.1.0,127.0.1.1,127.0.1.2,127.0.1.3,10.0.0.1" {
		t.Errorf("got %v", got)
	}
	if ips, err := parseSourceIPs("10.0.0.0/8"); err != nil || len(ips) != maxSourceIPs {
		t.Errorf("a /8: %d addresses, %v; want capped at %d", len(ips), err, maxSourceIPs)
	}
}
