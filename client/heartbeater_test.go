package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
)

// fastTiming makes the server ask for a heartbeat every 200 ms and expire
// sessions after 3 s.
func fastTiming(c *server.Config) {
	c.Interval = 200 * time.Millisecond
	c.TTL = 3 * time.Second
}

func start(t *testing.T, cfg client.Config) *client.Heartbeater {
	t.Helper()
	h, err := client.StartHeartbeater(context.Background(), cfg)
	if err != nil {
		t.Fatalf("StartHeartbeater: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func waitAck(t *testing.T, h *client.Heartbeater) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.WaitAck(ctx); err != nil {
		t.Fatalf("no heartbeat acknowledged: %v; status %+v", err, h.Status())
	}
}

// errorLog collects what OnError reports.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errorLog) list() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

func (l *errorLog) has(target error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		if errors.Is(e, target) {
			return true
		}
	}
	return false
}

func TestHeartbeatsOverUDP(t *testing.T) {
	n := startNode(t, fastTiming)
	h := start(t, client.Config{UDPAddr: n.UDP, User: "alice", Room: "lobby"})
	waitAck(t, h)
	if !onlineIn(n, "alice", "lobby") {
		t.Fatalf("alice not online in lobby after an acknowledged heartbeat: %+v", n.User("alice"))
	}
	// With the default 60 s interval a fifth ack would take minutes: it
	// comes in about a second only if the client follows interval_ms.
	testkit.Eventually(t, 10*time.Second, "5 acks at the server's interval", func() bool { return h.Status().Acked >= 5 })
	st := h.Status()
	if st.Transport != client.TransportUDP || st.Interval != 200*time.Millisecond || st.TTL != 3*time.Second {
		t.Errorf("status = %+v, want transport udp, interval 200ms, ttl 3s", st)
	}
	if st.LastError != nil || st.Resent != 0 {
		t.Errorf("errors or resends on a clean loopback: %+v", st)
	}
	if err := h.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestResendAfterDroppedDatagrams(t *testing.T) {
	n := startNode(t, nil)
	p := startProxy(t, n.UDP)
	p.Drop.Store(2)
	h := start(t, client.Config{
		UDPAddr: p.Addr(), BaseURL: n.Base, User: "bob", Room: "lobby",
		AckTimeout: 100 * time.Millisecond, FallbackAfter: 5,
	})
	waitAck(t, h)
	// Exactly 2 resends, unless a slow machine let a timeout pass before
	// the ack of the third datagram came.
	st := h.Status()
	if st.Transport != client.TransportUDP || st.Resent < 2 || st.Fallbacks != 0 {
		t.Errorf("status = %+v, want acked over udp after 2 resends, no fallback", st)
	}
	if got := p.Received.Load(); got < 3 || uint64(got) != st.Sent {
		t.Errorf("proxy saw %d datagrams, client sent %d; want 3 or more (2 dropped)", got, st.Sent)
	}
	if !onlineIn(n, "bob", "lobby") {
		t.Errorf("bob not online: %+v", n.User("bob"))
	}
}

func TestFallbackToHTTPAndBackToUDP(t *testing.T) {
	n := startNode(t, fastTiming)
	p := startProxy(t, n.UDP)
	p.Blackhole.Store(true)
	var errs errorLog
	h := start(t, client.Config{
		UDPAddr: p.Addr(), BaseURL: n.Base, User: "carol", Room: "lobby",
		AckTimeout: 20 * time.Millisecond, MaxAckTimeout: 50 * time.Millisecond, FallbackAfter: 3,
		UDPRetryAfter: time.Second, OnError: errs.add,
	})
	waitAck(t, h)
	st := h.Status()
	if st.Transport != client.TransportHTTP || st.Fallbacks != 1 || !errors.Is(st.LastError, client.ErrNoReply) {
		t.Fatalf("status = %+v, want http after one fallback for no reply", st)
	}
	if st.Interval != 200*time.Millisecond || st.TTL != 3*time.Second {
		t.Errorf("interval %s, ttl %s: want the HTTP answer's 200ms and 3s", st.Interval, st.TTL)
	}
	if !errs.has(client.ErrNoReply) {
		t.Errorf("OnError was not told about the silence")
	}
	if got := p.Received.Load(); got != 3 {
		t.Errorf("%d datagrams before the fallback, want FallbackAfter = 3", got)
	}
	if !onlineIn(n, "carol", "lobby") {
		t.Fatalf("carol not online over the HTTP fallback: %+v", n.User("carol"))
	}
	// While UDP stays black-holed, probes fall back again and the session lives.
	testkit.Eventually(t, 10*time.Second, "a second fallback after a UDP probe", func() bool { return h.Status().Fallbacks >= 2 })
	if !onlineIn(n, "carol", "lobby") {
		t.Fatalf("carol offline while on HTTP: %+v", n.User("carol"))
	}
	p.Blackhole.Store(false)
	testkit.Eventually(t, 10*time.Second, "heartbeats back on UDP", func() bool {
		st := h.Status()
		return st.Transport == client.TransportUDP && p.Forwarded.Load() > 0
	})
}

func TestTokenRefreshWhenExpired(t *testing.T) {
	n := startNode(t, func(c *server.Config) { fastTiming(c); withSecret(t)(c) })
	mint := func(valid time.Duration) string {
		tok, err := n.Keys.Mint("", "dave", "", false, time.Now().Add(valid))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	first := mint(2 * time.Second) // expires within 1 to 2 s (whole seconds)
	var mu sync.Mutex
	var reasons []error
	h := start(t, client.Config{
		UDPAddr: n.UDP, BaseURL: n.Base, User: "dave", Room: "lobby", Token: first,
		TokenFunc: func(ctx context.Context, reason error) (string, error) {
			mu.Lock()
			reasons = append(reasons, reason)
			mu.Unlock()
			return mint(time.Hour), nil
		},
	})
	waitAck(t, h)
	if h.Status().TokenRefreshes != 0 {
		t.Fatalf("token refreshed before it expired")
	}
	testkit.Eventually(t, 10*time.Second, "a token refresh", func() bool { return h.Status().TokenRefreshes >= 1 })
	mu.Lock()
	got := append([]error(nil), reasons...)
	mu.Unlock()
	if !errors.Is(got[0], client.ErrTokenExpired) {
		t.Errorf("TokenFunc reasons = %v, want token expired", got)
	}
	acked := h.Status().Acked
	testkit.Eventually(t, 10*time.Second, "acks with the new token", func() bool { return h.Status().Acked >= acked+3 })
	if st := h.Status(); st.TokenRefreshes != 1 || st.Transport != client.TransportUDP {
		t.Errorf("status = %+v, want one refresh and udp", st)
	}
	if !onlineIn(n, "dave", "lobby") {
		t.Errorf("dave offline after the refresh: %+v", n.User("dave"))
	}
}

func TestTokenRefreshWhenServerRefusesKey(t *testing.T) {
	n := startNode(t, func(c *server.Config) { fastTiming(c); withSecret(t)(c) })
	other, err := token.ParseKeyring([]byte("k9 another-secret-of-at-least-32-bytes-xxxxxxxx\n"))
	if err != nil {
		t.Fatal(err)
	}
	stale, err := other.Mint("", "erin", "", false, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reasons []error
	tokenFunc := func(ctx context.Context, reason error) (string, error) {
		mu.Lock()
		reasons = append(reasons, reason)
		mu.Unlock()
		return n.Keys.Mint("", "erin", "", false, time.Now().Add(time.Hour))
	}
	for _, tc := range []struct {
		name string
		udp  string
	}{
		{"http", ""},   // 401 "token key id is unknown"
		{"udp", n.UDP}, // silence, then the HTTP fallback says why
	} {
		t.Run(tc.name, func(t *testing.T) {
			reasons = nil
			h := start(t, client.Config{
				UDPAddr: tc.udp, BaseURL: n.Base, User: "erin", Room: tc.name, Token: stale,
				TokenFunc: tokenFunc, AckTimeout: 20 * time.Millisecond, FallbackAfter: 2,
				UDPRetryAfter: time.Hour,
			})
			waitAck(t, h)
			mu.Lock()
			got := append([]error(nil), reasons...)
			mu.Unlock()
			if len(got) != 1 || !errors.Is(got[0], client.ErrUnknownKey) {
				t.Errorf("TokenFunc reasons = %v, want one unknown key", got)
			}
			if !onlineIn(n, "erin", tc.name) {
				t.Errorf("erin not online in %s: %+v", tc.name, n.User("erin"))
			}
			if tc.udp != "" {
				// The refusal explained the silence: back to UDP at once,
				// not after UDPRetryAfter (an hour).
				testkit.Eventually(t, 10*time.Second, "heartbeats on UDP", func() bool {
					return h.Status().Transport == client.TransportUDP
				})
			}
		})
	}
}

func TestLeave(t *testing.T) {
	n := startNode(t, nil)
	for _, tc := range []struct {
		name         string
		udp, baseURL string
	}{
		{"udp", n.UDP, ""},
		{"http", "", n.Base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, client.Config{UDPAddr: tc.udp, BaseURL: tc.baseURL, User: "frank", Room: tc.name})
			waitAck(t, h)
			if !onlineIn(n, "frank", tc.name) {
				t.Fatalf("frank not online in %s", tc.name)
			}
			if err := h.Leave(context.Background()); err != nil {
				t.Fatalf("Leave: %v", err)
			}
			if onlineIn(n, "frank", tc.name) {
				t.Errorf("frank still in %s after Leave: %+v", tc.name, n.User("frank"))
			}
			if err := h.Leave(context.Background()); !errors.Is(err, client.ErrClosed) {
				t.Errorf("second Leave = %v, want ErrClosed", err)
			}
			if err := h.Close(); err != nil {
				t.Errorf("Close after Leave: %v", err)
			}
		})
	}
}

func TestStateGoesOverHTTP(t *testing.T) {
	n := startNode(t, fastTiming)
	var mu sync.Mutex
	var bodies []map[string]json.RawMessage
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]json.RawMessage
		if r.URL.Path != "/v1/heartbeat" || json.Unmarshal(b, &m) != nil {
			http.Error(w, `{"error":"unexpected"}`, 400)
			return
		}
		mu.Lock()
		bodies = append(bodies, m)
		mu.Unlock()
		w.Write([]byte(`{"interval_ms":200,"ttl_ms":3000}`))
	}))
	t.Cleanup(fake.Close)
	got := func() []map[string]json.RawMessage {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]json.RawMessage(nil), bodies...)
	}
	h := start(t, client.Config{
		UDPAddr: n.UDP, BaseURL: fake.URL, User: "gina", Room: "lobby",
		State: map[string]string{"status": "online"},
	})
	waitAck(t, h)
	// The first heartbeat sets the state over HTTP, the next go over UDP.
	testkit.Eventually(t, 10*time.Second, "3 UDP acks", func() bool {
		st := h.Status()
		return st.Acked >= 4 && st.Transport == client.TransportUDP
	})
	if b := got(); len(b) != 1 || string(b[0]["state"]) != `{"status":"online"}` || string(b[0]["user"]) != `"gina"` {
		t.Fatalf("HTTP heartbeats = %v, want one carrying the state", b)
	}
	if err := h.SetState(json.RawMessage(`{"status":"away"}`)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the new state over HTTP", func() bool { return len(got()) == 2 })
	if err := h.SetState(nil); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the cleared state over HTTP", func() bool { return len(got()) == 3 })
	b := got()
	if string(b[1]["state"]) != `{"status":"away"}` || string(b[2]["state"]) != "null" {
		t.Errorf("states sent = %s, %s; want the away object, then null", b[1]["state"], b[2]["state"])
	}
	if err := h.SetState([]int{1}); err == nil {
		t.Errorf("SetState accepted a JSON array")
	}
}

func TestCancelEndsGoroutineAndUnblocksRead(t *testing.T) {
	n := startNode(t, nil)
	p := startProxy(t, n.UDP)
	p.Blackhole.Store(true)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	h, err := client.StartHeartbeater(ctx, client.Config{
		UDPAddr: p.Addr(), User: "hal", AckTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The heartbeater now waits up to a minute for an ack that never comes.
	testkit.Eventually(t, 10*time.Second, "the first datagram", func() bool { return p.Received.Load() == 1 })
	cancel()
	testkit.Eventually(t, 10*time.Second, "the heartbeat goroutine to end", func() bool { return runtime.NumGoroutine() <= before })
	done := make(chan error, 1)
	go func() { done <- h.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []client.Config{
		{User: "a"},                             // no transport
		{UDPAddr: "127.0.0.1:1", User: ""},      // no user
		{UDPAddr: "127.0.0.1:1", User: "a\x01"}, // control character
		{BaseURL: "http://x", User: "a", Interval: -1},
	} {
		if _, err := client.StartHeartbeater(context.Background(), c); err == nil {
			t.Errorf("StartHeartbeater(%+v) succeeded", c)
		}
	}
}

func TestStateRefusedOrHTTPDown(t *testing.T) {
	n := startNode(t, fastTiming)
	var mu sync.Mutex
	var states []string
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]json.RawMessage
		json.NewDecoder(r.Body).Decode(&m)
		st := string(m["state"])
		mu.Lock()
		states = append(states, st)
		mu.Unlock()
		switch {
		case strings.Contains(st, "big"):
			w.WriteHeader(400)
			w.Write([]byte(`{"error":"state exceeds max-state-bytes (1024)"}`))
		case strings.Contains(st, "down"):
			w.WriteHeader(503)
			w.Write([]byte(`{"error":"server is shutting down"}`))
		default:
			w.Write([]byte(`{"interval_ms":200,"ttl_ms":3000}`))
		}
	}))
	t.Cleanup(fake.Close)
	count := func(sub string) int {
		mu.Lock()
		defer mu.Unlock()
		c := 0
		for _, s := range states {
			if strings.Contains(s, sub) {
				c++
			}
		}
		return c
	}
	var errs errorLog
	h := start(t, client.Config{
		UDPAddr: n.UDP, BaseURL: fake.URL, User: "ivan", Room: "lobby",
		State: map[string]string{"x": "big"}, OnError: errs.add,
	})
	// A refused state is dropped (the server applied nothing), and the
	// heartbeat goes again without it: over UDP.
	waitAck(t, h)
	if st := h.Status(); st.Transport != client.TransportUDP || !errs.has(client.ErrBadRequest) || count("big") != 1 {
		t.Fatalf("status %+v, errors %v, refused states sent %d: want udp after one refusal", st, errs.list(), count("big"))
	}
	// While HTTP fails, UDP keeps the session and the state is tried again.
	if err := h.SetState(map[string]string{"x": "down"}); err != nil {
		t.Fatal(err)
	}
	acked := h.Status().Acked
	testkit.Eventually(t, 10*time.Second, "the state retried while UDP acks", func() bool {
		return count("down") >= 3 && h.Status().Acked >= acked+3
	})
	if !errs.has(client.ErrUnavailable) || !onlineIn(n, "ivan", "lobby") {
		t.Errorf("errors %v, online %v: want unavailable reported and ivan online", errs.list(), onlineIn(n, "ivan", "lobby"))
	}
}

func TestSetStateRespectsMinGap(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.Interval, c.TTL, c.HeartbeatMinGap = 10*time.Second, 30*time.Second, time.Second
	})
	var errs errorLog
	h := start(t, client.Config{UDPAddr: n.UDP, BaseURL: n.Base, User: "judy", Room: "lobby", OnError: errs.add})
	waitAck(t, h)
	if err := h.SetState(map[string]string{"status": "away"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the state heartbeat accepted over HTTP", func() bool {
		st := h.Status()
		return st.Acked == 2 && st.Transport == client.TransportHTTP
	})
	if errs.has(client.ErrRateLimited) {
		t.Errorf("the state heartbeat was sent within --heartbeat-min-gap: %v", errs.list())
	}
}
