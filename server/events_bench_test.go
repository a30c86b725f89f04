package server_test

// Black-box benchmarks of the event pipeline: the real binary,
// built once (testkit.Build) and pinned to core 1 with taskset, driven over
// loopback HTTP by this process. Run this process on the other core:
//
//	taskset -c 0 go test -run '^$' -bench BenchmarkEvents -benchtime 1x ./server/
//
// Each benchmark does a fixed amount of work whatever b.N is, and reports
// its figures, and their same-run baselines, as custom metrics. CI does not
// run benchmarks.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/redistest"
)

// ebProc is one presenced process of these benchmarks.
type ebProc struct{ *testkit.Proc }

// ebStart runs presenced (testkit.Build without -race) pinned to core 1
// and waits for /readyz.
func ebStart(b *testing.B, args ...string) *ebProc {
	b.Helper()
	return &ebProc{testkit.StartProc(b, testkit.ProcConfig{
		Bin:  testkit.BuildT(b),
		Wrap: []string{"taskset", "-c", "1"},
		Args: append([]string{"--udp-loops", "1", "--data-dir=", "--leave-delay", "0", "--max-event-streams", "2000",
			"--http-max-conns-per-ip", "0", "--source-rate", "0"}, args...),
	})}
}

// cpu returns the CPU time presenced has used (user + system).
func (p *ebProc) cpu(b *testing.B) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		b.Fatalf("cannot read the server's CPU time: %v", err)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}

// metric returns one unlabelled series of /metrics.
func (p *ebProc) metric(b *testing.B, name string) float64 {
	b.Helper()
	resp, err := http.Get(p.Base + "/metrics")
	if err != nil {
		b.Fatalf("cannot read metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			x, _ := strconv.ParseFloat(v, 64)
			return x
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}

var ebClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, Timeout: 30 * time.Second}

func ebPost(b *testing.B, url, body string) {
	resp, err := ebClient.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		b.Errorf("cannot post %s: %v", url, err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Errorf("%s: status %d", url, resp.StatusCode)
	}
}

// ebBatch is a POST /v1/heartbeats body of n new users user-<first+i>, in
// room(i).
func ebBatch(first, n int, room func(i int) string) string {
	var sb strings.Builder
	sb.WriteString(`{"heartbeats":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"user":"user-%d","room":%q}`, first+i, room(first+i))
	}
	sb.WriteString("]}")
	return sb.String()
}

// ebStream opens GET /v1/events (room "" is all rooms).
func ebStream(b *testing.B, base, room, lastID string) *http.Response {
	b.Helper()
	u := base + "/v1/events"
	if room != "" {
		u += "?room=" + room
	}
	req, _ := http.NewRequest("GET", u, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := ebStreams.Do(req)
	if err != nil {
		b.Fatalf("cannot open stream: %v", err)
	}
	if resp.StatusCode != 200 {
		b.Fatalf("stream: status %d", resp.StatusCode)
	}
	return resp
}

var ebStreams = &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 2000, DisableCompression: true}}

// ebEvent is one parsed server-sent event.
type ebEvent struct{ id, typ, user string }

// ebRead reads events from body until it ends, calling f for each.
func ebRead(body io.Reader, f func(ev ebEvent) bool) {
	r := bufio.NewReaderSize(body, 64<<10)
	var ev ebEvent
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		switch {
		case bytes.HasPrefix(line, []byte("id: ")):
			ev.id = string(bytes.TrimSpace(line[4:]))
		case bytes.HasPrefix(line, []byte("event: ")):
			ev.typ = string(bytes.TrimSpace(line[7:]))
		case bytes.HasPrefix(line, []byte("data: ")):
			if i := bytes.Index(line, []byte(`"user":"`)); i >= 0 {
				rest := line[i+8:]
				ev.user = string(rest[:bytes.IndexByte(rest, '"')])
			}
		case len(line) == 1 && ev.typ != "":
			if !f(ev) {
				return
			}
			ev = ebEvent{}
		}
	}
}

// ebCount counts the events (and resets) on a stream until it ends,
// without parsing them: the fan-out readers must cost the client side as
// little as possible.
func ebCount(body io.Reader, events, resets *atomic.Int64) {
	buf := make([]byte, 64<<10)
	ev, rs := []byte("\nevent: "), []byte("event: reset")
	carry := 0
	for {
		n, err := body.Read(buf[carry:])
		if n > 0 {
			w := buf[:carry+n]
			events.Add(int64(bytes.Count(w, ev)))
			resets.Add(int64(bytes.Count(w, rs)))
			// keep the last bytes, in case a marker is split by the read
			carry = copy(buf, w[max(0, len(w)-(len(rs)-1)):])
		}
		if err != nil {
			return
		}
	}
}

// selfCPU is this process's CPU time (the generator and the readers).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// coreBusy returns the busy and total jiffies of each CPU (/proc/stat), to
// tell whose core was full: ours, the server's, or taken by others.
func coreBusy() (busy, total [2]int64) {
	raw, _ := os.ReadFile("/proc/stat")
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || (f[0] != "cpu0" && f[0] != "cpu1") {
			continue
		}
		i := int(f[0][3] - '0')
		for j, v := range f[1:9] { // user nice system idle iowait irq softirq steal
			x, _ := strconv.ParseInt(v, 10, 64)
			total[i] += x
			if j != 3 && j != 4 {
				busy[i] += x
			}
		}
	}
	return busy, total
}

// BenchmarkEventsFanout: 10,000 joins/s (batches of 100 new users every
// 10 ms) for 10 s, to 1,000 SSE streams all on one room, or each on its
// own room of 1,000 (events spread over the same 1,000 rooms), beside the
// same load with no stream open.
func BenchmarkEventsFanout(b *testing.B) {
	const (
		rate     = 10000
		batch    = 100
		duration = 10 * time.Second
		nsubs    = 1000
	)
	cases := []struct {
		name  string
		rate  int
		subs  int
		room  func(i int) string // of event i
		sroom func(i int) string // of stream i
	}{
		{"baseline-0subs/one-room", rate, 0, func(int) string { return "r0" }, nil},
		{"1000subs/one-room", rate, nsubs, func(int) string { return "r0" }, func(int) string { return "r0" }},
		{"baseline-0subs/1000-rooms", rate, 0, func(i int) string { return "r" + strconv.Itoa(i%nsubs) }, nil},
		{"1000subs/1000-rooms", rate, nsubs, func(i int) string { return "r" + strconv.Itoa(i%nsubs) }, func(i int) string { return "r" + strconv.Itoa(i) }},
	}
	// One room at a tenth of the rate: 1M deliveries/s instead of 10M.
	cases = append(cases, cases[0], cases[1])
	cases[4].name, cases[4].rate = "baseline-0subs/one-room-1000ev/s", rate/10
	cases[5].name, cases[5].rate = "1000subs/one-room-1000ev/s", rate/10
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			p := ebStart(b)
			var delivered, resets atomic.Int64
			var wg sync.WaitGroup
			var bodies []io.Closer
			for i := 0; i < c.subs; i++ {
				resp := ebStream(b, p.Base, c.sroom(i), "")
				bodies = append(bodies, resp.Body)
				wg.Add(1)
				go func() {
					defer wg.Done()
					ebCount(resp.Body, &delivered, &resets)
				}()
			}
			testkit.Eventually(b, 10*time.Second, "every stream open", func() bool {
				return p.metric(b, "presenced_event_subscribers") >= float64(c.subs)
			})
			pub0, drop0, reset0 := p.metric(b, "presenced_events_published_total"), p.metric(b, "presenced_events_dropped_total"), p.metric(b, "presenced_event_resets_total")
			busy0, total0 := coreBusy()
			cpu0, self0, t0 := p.cpu(b), selfCPU(), time.Now()
			sem := make(chan struct{}, 8)
			unsent := 0
			var gen sync.WaitGroup
			every := time.Second / time.Duration(c.rate) * batch
			for k := 0; k < int(duration/every); k++ {
				due := t0.Add(time.Duration(k) * every)
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				} else if time.Since(t0) > duration {
					unsent++ // bounded run: what could not be sent in time is not
					continue
				}
				sem <- struct{}{}
				gen.Add(1)
				go func(first int) {
					defer gen.Done()
					ebPost(b, p.Base+"/v1/heartbeats", ebBatch(first, batch, c.room))
					<-sem
				}(k * batch)
			}
			gen.Wait()
			cpu1, self1, t1 := p.cpu(b), selfCPU(), time.Now()
			busy1, total1 := coreBusy()
			for i := range busy0 {
				b.ReportMetric(float64(busy1[i]-busy0[i])/float64(total1[i]-total0[i]), fmt.Sprintf("core%d-busy", i))
			}
			pub := p.metric(b, "presenced_events_published_total") - pub0
			drops := p.metric(b, "presenced_events_dropped_total") - drop0
			srvResets := p.metric(b, "presenced_event_resets_total") - reset0
			el := t1.Sub(t0).Seconds()
			b.ReportMetric(pub/el, "events/s")
			b.ReportMetric((cpu1-cpu0).Seconds()/el, "server-cpu-s/s")
			b.ReportMetric((cpu1-cpu0).Seconds()/pub*1e6, "server-cpu-us/event")
			b.ReportMetric(drops, "dropped")
			b.ReportMetric(srvResets, "resets")
			b.ReportMetric(float64(delivered.Load())/el, "delivered/s")
			b.ReportMetric(float64(delivered.Load())/pub, "delivered/event")
			b.ReportMetric((self1-self0).Seconds()/el, "client-cpu-s/s")
			b.ReportMetric(float64(unsent*batch), "unsent")
			for _, c := range bodies {
				c.Close()
			}
			wg.Wait()
		})
	}
}

func ebPercentiles(d []time.Duration) (p50, p99 time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)*50/100], d[len(d)*99/100]
}

// ebLatency sends n heartbeats of new users to hb (one POST /v1/heartbeat
// each, 100/s) with a stream open on sse on their room, and reports p50/p99
// from send to the join on the stream beside the heartbeat's own round trip.
func ebLatency(b *testing.B, hb, sse string, n int) {
	resp := ebStream(b, sse, "lat", "")
	defer resp.Body.Close()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	got := make(chan time.Duration, n)
	go ebRead(resp.Body, func(ev ebEvent) bool {
		now := time.Now()
		if ev.typ != "join" {
			return true
		}
		mu.Lock()
		t, ok := sent[ev.user]
		mu.Unlock()
		if ok {
			got <- now.Sub(t)
		}
		return true
	})
	// One join to warm the stream and the connection before measuring.
	ebPost(b, hb+"/v1/heartbeat", `{"user":"warm","room":"lat"}`)
	rtt := make([]time.Duration, 0, n)
	delivery := make([]time.Duration, 0, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		if d := time.Until(t0.Add(time.Duration(i) * 10 * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
		user := "lat-" + strconv.Itoa(i)
		s := time.Now()
		mu.Lock()
		sent[user] = s
		mu.Unlock()
		ebPost(b, hb+"/v1/heartbeat", `{"user":"`+user+`","room":"lat"}`)
		rtt = append(rtt, time.Since(s))
	}
	timeout := time.After(10 * time.Second)
	for len(delivery) < n {
		select {
		case d := <-got:
			delivery = append(delivery, d)
		case <-timeout:
			b.Fatalf("%d of %d joins delivered after 10s", len(delivery), n)
		}
	}
	p50, p99 := ebPercentiles(delivery)
	r50, r99 := ebPercentiles(rtt)
	b.ReportMetric(float64(p50.Microseconds()), "delivery-p50-us")
	b.ReportMetric(float64(p99.Microseconds()), "delivery-p99-us")
	b.ReportMetric(float64(r50.Microseconds()), "baseline-heartbeat-rtt-p50-us")
	b.ReportMetric(float64(r99.Microseconds()), "baseline-heartbeat-rtt-p99-us")
}

// BenchmarkEventsLatency: from an HTTP heartbeat of a new user to its join
// on an open stream, 1,000 heartbeats at 100/s, on one node and from node A
// to node B of a cluster on one redis-server.
func BenchmarkEventsLatency(b *testing.B) {
	const n = 1000
	b.Run("single-node", func(b *testing.B) {
		p := ebStart(b)
		ebLatency(b, p.Base, p.Base, n)
	})
	b.Run("cluster-A-to-B", func(b *testing.B) {
		r := redistest.Start(b)
		a := ebStart(b, "--redis", r.Addr(), "--node-id", "a")
		c := ebStart(b, "--redis", r.Addr(), "--node-id", "b")
		ebLatency(b, a.Base, c.Base, n)
	})
	// With a write-ahead log the change pump runs every quarter
	// --fsync-interval (25 ms) instead of 50 ms, and replication does not
	// wait for the log's commits.
	b.Run("cluster-A-to-B-with-log", func(b *testing.B) {
		r := redistest.Start(b)
		a := ebStart(b, "--redis", r.Addr(), "--node-id", "a", "--data-dir", b.TempDir())
		c := ebStart(b, "--redis", r.Addr(), "--node-id", "b", "--data-dir", b.TempDir())
		ebLatency(b, a.Base, c.Base, n)
	})
}

// ebResume publishes the events on gen (a live stream on gen reads them at
// full speed: the baseline), then resumes on res from the id before them.
func ebResume(b *testing.B, gen *ebProc, res func() *ebProc) {
	const n = 100000
	live := ebStream(b, gen.Base, "", "")
	defer live.Body.Close()
	marker := make(chan string, 1)
	liveDone := make(chan time.Time, 1)
	count := 0
	go ebRead(live.Body, func(ev ebEvent) bool {
		if ev.user == "marker" {
			marker <- ev.id
			return true
		}
		if ev.typ == "join" && strings.HasPrefix(ev.user, "user-") {
			count++
			if count == n {
				liveDone <- time.Now()
				return false
			}
		}
		return true
	})
	ebPost(b, gen.Base+"/v1/heartbeat", `{"user":"marker","room":"marker"}`)
	var since string
	select {
	case since = <-marker:
	case <-time.After(10 * time.Second):
		b.Fatalf("no marker event after 10s; server log:\n%s", gen.Stderr())
	}
	pub0 := gen.metric(b, "presenced_events_published_total")
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for k := 0; k < n/1000; k++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(first int) {
			defer wg.Done()
			ebPost(b, gen.Base+"/v1/heartbeats", ebBatch(first, 1000, func(int) string { return "bulk" }))
			<-sem
		}(k * 1000)
	}
	wg.Wait()
	genTime := time.Since(t0)
	var liveTime time.Duration
	select {
	case t := <-liveDone:
		liveTime = t.Sub(t0)
	case <-time.After(60 * time.Second):
		b.Fatalf("live stream did not get %d joins after 60s (%d)", n, count)
	}
	missed := int(gen.metric(b, "presenced_events_published_total") - pub0)
	p := res()
	t1 := time.Now()
	resp := ebStream(b, p.Base, "", since)
	defer resp.Body.Close()
	got, resets := 0, 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		ebRead(resp.Body, func(ev ebEvent) bool {
			if ev.typ == "reset" {
				resets++
			}
			got++
			return got < missed
		})
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		b.Fatalf("resume did not get %d events after 60s", missed)
	}
	resume := time.Since(t1)
	if resets > 0 {
		b.Errorf("resume got %d resets", resets)
	}
	b.ReportMetric(float64(missed), "events")
	b.ReportMetric(resume.Seconds()*1e3, "resume-ms")
	b.ReportMetric(float64(missed)/resume.Seconds(), "resume-events/s")
	b.ReportMetric(genTime.Seconds()*1e3, "baseline-generate-ms")
	b.ReportMetric(liveTime.Seconds()*1e3, "baseline-live-read-ms")
}

// BenchmarkEventsResume100k: a stream that resumes from the id before
// 100,000 events (joins of new users in batches of 1,000): on the node that
// holds them in its ring, and on a cluster node started after them (history
// from the Redis Stream), beside the time to generate them with a live
// stream reading them.
func BenchmarkEventsResume100k(b *testing.B) {
	b.Run("single-node-ring", func(b *testing.B) {
		p := ebStart(b, "--event-history", "200000")
		ebResume(b, p, func() *ebProc { return p })
	})
	b.Run("cluster-new-node-XRANGE", func(b *testing.B) {
		r := redistest.Start(b)
		a := ebStart(b, "--redis", r.Addr(), "--node-id", "a")
		ebResume(b, a, func() *ebProc { return ebStart(b, "--redis", r.Addr(), "--node-id", "c") })
	})
}
