package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/events"
)

const testSecret = "0123456789abcdef0123456789abcdef-webhook"

// receiver is a webhook receiver on loopback: it verifies every batch,
// records the events it accepted, and answers what the test tells it to.
type receiver struct {
	t    *testing.T
	addr string
	srv  *http.Server
	mu   struct {
		sync.Mutex
		answer  func(n int) int // status for request n (from 1)
		reqs    int
		evs     []wireEv
		badSigs int
		last    struct {
			body   []byte
			header string
		}
		delay time.Duration
		// maxEvents > 0: a batch of more events is answered 413.
		maxEvents int
		// retryAfter, when set, is sent with every answer that is not 2xx.
		retryAfter string
		times      []time.Time // when each request came
	}
}

type wireEv struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	User   string `json:"user"`
	Room   string `json:"room"`
	Reason string `json:"reason"`
}

func startReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.mu.answer = func(int) int { return 200 }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.serve(ln)
	t.Cleanup(r.down)
	return r
}

func (r *receiver) url() string { return "http://" + r.addr + "/hook" }

func (r *receiver) serve(ln net.Listener) {
	r.srv = &http.Server{Handler: http.HandlerFunc(r.handle)}
	go func() { _ = r.srv.Serve(ln) }()
}

// down closes the listener: connections are refused until up.
func (r *receiver) down() {
	if r.srv != nil {
		_ = r.srv.Close()
		r.srv = nil
	}
}

func (r *receiver) up() {
	var ln net.Listener
	testkit.EventuallyErr(r.t, 2*time.Second, "the receiver's port (it may linger briefly)", func() (err error) {
		ln, err = net.Listen("tcp", r.addr)
		return err
	})
	r.serve(ln)
}

func (r *receiver) setAnswer(f func(n int) int) {
	r.mu.Lock()
	r.mu.answer = f
	r.mu.Unlock()
}

func (r *receiver) handle(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.mu.reqs++
	code := r.mu.answer(r.mu.reqs)
	delay := r.mu.delay
	sig := req.Header.Get(SignatureHeader)
	r.mu.last.body, r.mu.last.header = body, sig
	r.mu.times = append(r.mu.times, time.Now())
	if Verify([]byte(testSecret), sig, body, time.Now().Unix(), 300) != nil {
		r.mu.badSigs++
		code = 401
	}
	var b struct{ Events []wireEv }
	if err := json.Unmarshal(body, &b); err != nil {
		r.t.Errorf("receiver: bad body %q: %v", body, err)
	}
	if r.mu.maxEvents > 0 && len(b.Events) > r.mu.maxEvents {
		code = http.StatusRequestEntityTooLarge
	}
	if code/100 == 2 {
		r.mu.evs = append(r.mu.evs, b.Events...)
	} else if r.mu.retryAfter != "" {
		w.Header().Set("Retry-After", r.mu.retryAfter)
	}
	r.mu.Unlock()
	time.Sleep(delay) // a slow receiver, by design
	w.WriteHeader(code)
}

func (r *receiver) events() []wireEv {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]wireEv(nil), r.mu.evs...)
}

func (r *receiver) requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.reqs
}

func testConfig(t *testing.T, url string) Config {
	cfg := DefaultConfig()
	cfg.URL = url
	f := filepath.Join(t.TempDir(), "webhook.keys")
	if err := os.WriteFile(f, []byte("# webhook keys\nk1 "+testSecret+"\nold "+testSecret+"-old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.SecretFile = f
	cfg.MaxBackoff = 500 * time.Millisecond
	cfg.Linger = 20 * time.Millisecond
	cfg.Batch = 10
	cfg.Timeout = 2 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("PRESENCED_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return cfg
}

func startLocal(t *testing.T, cfg Config, bus *events.Bus, q *persist.Queue) *Deliverer {
	t.Helper()
	d, err := StartLocal(cfg, bus, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

// publish puts n events on the bus, round-robin over rooms rooms.
func publish(bus *events.Bus, from, n, rooms int) {
	for i := from; i < from+n; i++ {
		typ := events.Join
		if i%3 == 2 {
			typ = events.Leave
		}
		bus.Publish(&events.Event{Type: typ, User: fmt.Sprintf("u%d", i), Room: fmt.Sprintf("room%d", i%rooms),
			At: time.Now().UnixMilli(), Reason: map[bool]string{true: events.ReasonLeft}[typ == events.Leave]})
	}
}

// checkAll asserts that every user u<from>..u<from+n-1> arrived, and that
// within each room events arrived in id order (duplicates allowed: at
// least once).
func checkAll(t *testing.T, evs []wireEv, from, n int) {
	t.Helper()
	seen := map[string]bool{}
	lastByRoom := map[string]events.ID{}
	for _, e := range evs {
		id, ok := events.ParseID(e.ID)
		if !ok {
			t.Fatalf("bad id %q", e.ID)
		}
		if seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		if prev, ok := lastByRoom[e.Room]; ok && !prev.Less(id) {
			t.Fatalf("room %s: event %s after %s: out of order", e.Room, id, prev)
		}
		lastByRoom[e.Room] = id
	}
	users := map[string]bool{}
	for _, e := range evs {
		users[e.User] = true
	}
	for i := from; i < from+n; i++ {
		if !users[fmt.Sprintf("u%d", i)] {
			t.Fatalf("event of u%d never delivered (%d events received)", i, len(evs))
		}
	}
}

func TestSignatureVerifies(t *testing.T) {
	r := startReceiver(t)
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, testConfig(t, r.url()), bus, nil)
	publish(bus, 0, 5, 2)
	testkit.Eventually(t, 5*time.Second, "5 events delivered", func() bool { return len(r.events()) >= 5 })
	r.mu.Lock()
	bad, body, header := r.mu.badSigs, r.mu.last.body, r.mu.last.header
	r.mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d batches did not verify", bad)
	}
	if !bytes.HasPrefix(body, []byte(`{"events":[{"id":"1-`)) {
		t.Fatalf("body %s", body)
	}
	// The same event JSON as SSE data.
	if ev := r.events()[0]; ev.Type != "join" || ev.User != "u0" || ev.Room != "room0" {
		t.Fatalf("first event %+v", ev)
	}
	// The deliverer counts a batch once the receiver's answer is back,
	// which may be just after the receiver recorded it.
	testkit.Eventually(t, 5*time.Second, "5 events counted delivered", func() bool { return d.Stats().Delivered >= 5 })
	if st := d.Stats(); st.Delivered != 5 || st.Attempts[Class2xx] == 0 {
		t.Fatalf("stats %+v", st)
	}
	// A wrong secret (the second key does not sign) and a changed body fail.
	if Verify([]byte(testSecret+"-old"), header, body, time.Now().Unix(), 300) == nil {
		t.Fatal("the second key verified: only the first signs")
	}
	if Verify([]byte(testSecret), header, append(body, ' '), time.Now().Unix(), 300) == nil {
		t.Fatal("a changed body verified")
	}
	if Verify([]byte(testSecret), header, body, time.Now().Unix()+3600, 300) == nil {
		t.Fatal("a stale signature verified")
	}

	// The Python example from the README verifies it too.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 not installed: Python example not run")
		return
	}
	run := func(body []byte) error {
		cmd := exec.Command(py, "example/verify.py", testSecret, header)
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if len(out) > 0 {
			t.Logf("verify.py: %s", out)
		}
		return err
	}
	if err := run(body); err != nil {
		t.Fatalf("verify.py rejected a genuine batch: %v", err)
	}
	if err := run(append(body, ' ')); err == nil {
		t.Fatal("verify.py accepted a changed body")
	}
}

func TestReceiverDownThenBack(t *testing.T) {
	r := startReceiver(t)
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, testConfig(t, r.url()), bus, nil)
	publish(bus, 0, 20, 4)
	testkit.Eventually(t, 5*time.Second, "first events delivered", func() bool { return len(r.events()) >= 20 })
	r.down()
	// Events keep coming for the 10 s the receiver is down.
	for i := 0; i < 10; i++ {
		publish(bus, 20+i*30, 30, 4)
		time.Sleep(time.Second) // paces the load over the real 10 s outage
	}
	if st := d.Stats(); st.Depth == 0 || st.Attempts[ClassError] == 0 {
		t.Fatalf("receiver down, yet nothing queued or failed: %+v", st)
	}
	r.up()
	testkit.Eventually(t, 15*time.Second, "all events delivered", func() bool { return d.Stats().Depth == 0 && len(r.events()) >= 320 })
	checkAll(t, r.events(), 0, 320)
	if st := d.Stats(); st.DeadLettered != 0 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestServerErrorsThenSuccess(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(n int) int {
		if n <= 4 {
			return 500 + n%4 // 501, 502, 503, 500
		}
		return 200
	})
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, testConfig(t, r.url()), bus, nil)
	publish(bus, 0, 50, 3)
	testkit.Eventually(t, 10*time.Second, "all events delivered", func() bool { return d.Stats().Delivered >= 50 })
	checkAll(t, r.events(), 0, 50)
	if st := d.Stats(); st.Attempts[Class5xx] != 4 || st.DeadLettered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A receiver that answers 413 to batches of more than 10 events gets the
// 31 events of one batch in halves, in order, none dead-lettered.
func TestTooLargeSplits(t *testing.T) {
	r := startReceiver(t)
	r.mu.Lock()
	r.mu.maxEvents = 10
	r.mu.Unlock()
	cfg := testConfig(t, r.url())
	cfg.Batch = 100
	cfg.Linger = time.Second // the first batch holds all 31
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	publish(bus, 0, 31, 1)
	testkit.Eventually(t, 10*time.Second, "all 31 delivered", func() bool { return d.Stats().Delivered == 31 })
	checkAll(t, r.events(), 0, 31)
	if st := d.Stats(); st.DeadLettered != 0 {
		t.Fatalf("stats %+v: a too large batch was dead-lettered", st)
	}
}

// A 503 with Retry-After: 1 is retried no sooner than a second later,
// although the backoff alone would retry within 100 ms.
func TestRetryAfterHonoured(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(n int) int {
		if n == 1 {
			return http.StatusServiceUnavailable
		}
		return 200
	})
	r.mu.Lock()
	r.mu.retryAfter = "1"
	r.mu.Unlock()
	cfg := testConfig(t, r.url())
	cfg.MaxBackoff = 5 * time.Second // Retry-After is honoured up to MaxBackoff
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	publish(bus, 0, 1, 1)
	testkit.Eventually(t, 10*time.Second, "the event delivered", func() bool { return d.Stats().Delivered == 1 })
	r.mu.Lock()
	times := append([]time.Time(nil), r.mu.times...)
	r.mu.Unlock()
	if len(times) != 2 || times[1].Sub(times[0]) < time.Second {
		t.Fatalf("requests at %v: want the retry at least 1 s after the 503", times)
	}
}

// A redirect is a misconfigured URL: dead-lettered at once, not retried
// until --webhook-max-age.
func TestRedirectDeadLetters(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(n int) int {
		if n == 1 {
			return http.StatusFound
		}
		return 200
	})
	cfg := testConfig(t, r.url())
	cfg.Linger = time.Second
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	publish(bus, 0, 3, 1)
	testkit.Eventually(t, 5*time.Second, "the batch dead-lettered", func() bool { return d.Stats().DeadLettered == 3 })
	if n := r.requests(); n != 1 {
		t.Fatalf("%d requests: a 302 was retried", n)
	}
}

func TestGoneDeadLetters(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(n int) int {
		if n == 1 {
			return http.StatusGone
		}
		return 200
	})
	cfg := testConfig(t, r.url())
	cfg.Linger = time.Second // the first batch holds all 5
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	publish(bus, 0, 5, 1)
	testkit.Eventually(t, 5*time.Second, "the batch dead-lettered", func() bool { return d.Stats().DeadLettered == 5 })
	publish(bus, 5, 3, 1)
	testkit.Eventually(t, 5*time.Second, "later events delivered", func() bool { return d.Stats().Delivered == 3 })
	// Not retried: the receiver saw the refused batch once.
	if n := r.requests(); n != 2 {
		t.Fatalf("%d requests, want the refused batch and the next one", n)
	}
	for _, e := range r.events() {
		if e.User < "u5" {
			t.Fatalf("dead-lettered event %+v delivered", e)
		}
	}
	if st := d.Stats(); st.Attempts[Class4xx] != 1 || st.Depth != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRestartMidQueue: events queued in the store while the receiver
// fails are delivered by the next run.
func TestRestartMidQueue(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(int) int { return 503 })
	dir := t.TempDir()
	open := func() (*persist.Store, *persist.Queue) {
		pc := persist.DefaultConfig()
		pc.Dir = dir
		pc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		st, err := persist.Open(pc)
		if err != nil {
			t.Fatal(err)
		}
		q, err := st.OpenQueue()
		if err != nil {
			t.Fatal(err)
		}
		return st, q
	}
	st, q := open()
	bus := events.New(events.Config{Epoch: 1})
	d, err := StartLocal(testConfig(t, r.url()), bus, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(bus, 0, 40, 4)
	testkit.Eventually(t, 5*time.Second, "40 events queued", func() bool { return d.Stats().Depth == 40 })
	testkit.Eventually(t, 5*time.Second, "a failed attempt", func() bool { return r.requests() > 0 })
	d.Stop()
	bus.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	r.setAnswer(func(int) int { return 200 })
	st, q = open()
	defer st.Close()
	if n, _ := q.Len(); n != 40 {
		t.Fatalf("queue after restart holds %d, want 40", n)
	}
	bus = events.New(events.Config{Epoch: 2})
	d = startLocal(t, testConfig(t, r.url()), bus, q)
	publish(bus, 40, 10, 4)
	testkit.Eventually(t, 10*time.Second, "all events delivered", func() bool { return d.Stats().Depth == 0 && len(r.events()) >= 50 })
	evs := r.events()
	checkAll(t, evs, 0, 50)
	if evs[0].User != "u0" {
		t.Fatalf("first delivered %+v, want the oldest queued", evs[0])
	}
	d.Stop()
}

// TestQueueFull: beyond --webhook-max-queue events are dropped, counted,
// and the receiver gets a reset after what was queued.
func TestQueueFull(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(int) int { return 503 })
	cfg := testConfig(t, r.url())
	cfg.MaxQueue = 10
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	publish(bus, 0, 15, 1)
	testkit.Eventually(t, 5*time.Second, "5 events lost", func() bool { return d.Stats().Lost == 5 })
	r.setAnswer(func(int) int { return 200 })
	testkit.Eventually(t, 10*time.Second, "queued events delivered", func() bool { return d.Stats().Delivered >= 10 })
	publish(bus, 15, 1, 1)
	testkit.Eventually(t, 10*time.Second, "reset and new event delivered", func() bool { return d.Stats().Delivered >= 12 })
	evs := r.events()
	if evs[10].Type != "reset" || evs[10].Reason != "history_lost" || evs[11].User != "u15" {
		t.Fatalf("after the queued events: %+v, want a reset then u15", evs[10:])
	}
	if st := d.Stats(); st.Lost != 5 || st.Delivered != 12 {
		t.Fatalf("stats %+v", st)
	}
}

// TestQueueFullBytes: without a data directory the queue is in memory and
// bounded in bytes too (--webhook-max-queue-bytes): big events past the
// bound are dropped and counted, and the receiver gets a reset in their
// place.
func TestQueueFullBytes(t *testing.T) {
	r := startReceiver(t)
	r.setAnswer(func(int) int { return 503 })
	cfg := testConfig(t, r.url())
	cfg.MaxQueueBytes = 12_000
	bus := events.New(events.Config{Epoch: 1})
	d := startLocal(t, cfg, bus, nil)
	state := json.RawMessage(`{"s":"` + strings.Repeat("x", 1000) + `"}`)
	for i := range 20 {
		bus.Publish(&events.Event{Type: events.Join, User: fmt.Sprintf("u%d", i), Room: "room", At: 1, State: state})
	}
	testkit.Eventually(t, 5*time.Second, "events lost", func() bool { return d.Stats().Lost >= 5 })
	if st := d.Stats(); st.QueueBytes > cfg.MaxQueueBytes || st.QueueBytes < cfg.MaxQueueBytes/2 {
		t.Fatalf("stats %+v: want at most, and near, %d bytes queued", st, cfg.MaxQueueBytes)
	}
	r.setAnswer(func(int) int { return 200 })
	publish(bus, 20, 1, 1)
	testkit.Eventually(t, 10*time.Second, "the new event delivered", func() bool {
		evs := r.events()
		return len(evs) > 0 && evs[len(evs)-1].User == "u20"
	})
	joins, resets := 0, 0
	for _, ev := range r.events() {
		switch {
		case ev.Type == "reset":
			resets++
		case ev.User != "u20":
			joins++
		}
	}
	if st := d.Stats(); joins+int(st.Lost) != 20 || resets == 0 {
		t.Fatalf("%d joins delivered, %d lost, %d resets: want every event delivered or lost, and a reset", joins, st.Lost, resets)
	}
}
