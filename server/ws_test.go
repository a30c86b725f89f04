package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
)

// wsClient is one test WebSocket read by a goroutine into a channel.
type wsClient struct {
	t    *testing.T
	c    *websocket.Conn
	in   chan map[string]any
	done chan struct{}
	err  error // why reading ended, set before done closes
}

// dialWS opens GET /v1/ws with an optional query and header and closes it
// when the test ends.
func dialWS(t *testing.T, n *node, query string, h http.Header) *wsClient {
	t.Helper()
	c, err := tryDialWS(n, query, h)
	if err != nil {
		t.Fatalf("dial /v1/ws%s: %v", query, err)
	}
	w := &wsClient{t: t, c: c, in: make(chan map[string]any, 1024), done: make(chan struct{})}
	go w.read()
	t.Cleanup(w.close)
	return w
}

func tryDialWS(n *node, query string, h http.Header) (*websocket.Conn, error) {
	url := "ws" + strings.TrimPrefix(n.Base, "http") + "/v1/ws" + query
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(url, h)
	if err != nil && resp != nil {
		return nil, fmt.Errorf("%w (status %d)", err, resp.StatusCode)
	}
	return c, err
}

func (w *wsClient) read() {
	defer close(w.done)
	for {
		mt, b, err := w.c.ReadMessage()
		if err != nil {
			w.err = err
			return
		}
		var m map[string]any
		if mt != websocket.TextMessage || json.Unmarshal(b, &m) != nil {
			w.err = fmt.Errorf("not a JSON text frame: %q", b)
			return
		}
		switch m["type"] {
		case "occupied", "vacated", "occupancy":
			continue // room events: these tests follow members
		}
		w.in <- m
	}
}

func (w *wsClient) close() {
	_ = w.c.Close()
	<-w.done
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, ok := v.(string)
	if !ok {
		bb, err := json.Marshal(v)
		if err != nil {
			w.t.Fatal(err)
		}
		b = string(bb)
	}
	if err := w.c.WriteMessage(websocket.TextMessage, []byte(b)); err != nil {
		w.t.Fatalf("write %s: %v", b, err)
	}
}

// next returns the next message or fails the test after d.
func (w *wsClient) next(d time.Duration) map[string]any {
	w.t.Helper()
	select {
	case m := <-w.in:
		return m
	case <-w.done:
		select {
		case m := <-w.in:
			return m
		default:
		}
		w.t.Fatalf("socket ended before the next message: %v", w.err)
	case <-time.After(d):
		w.t.Fatalf("no message within %s", d)
	}
	return nil
}

// call sends req and returns the next message, which must be its answer
// (it echoes ref).
func (w *wsClient) call(req map[string]any) map[string]any {
	w.t.Helper()
	w.send(req)
	m := w.next(5 * time.Second)
	if fmt.Sprint(m["ref"]) != fmt.Sprint(req["ref"]) {
		w.t.Fatalf("answer %v to %v: ref not echoed", m, req)
	}
	return m
}

func (w *wsClient) mustOK(req map[string]any) map[string]any {
	w.t.Helper()
	m := w.call(req)
	if m["ok"] != true {
		w.t.Fatalf("%v: got %v, want ok", req, m)
	}
	return m
}

// mustOKAndEvent sends req, which causes an event on a subscription of the
// same socket, and returns its answer. The event (checked against key, as
// by wantEvent) may come before the answer: the op publishes it before it
// answers, and the subscription's pump writes it on its own.
func (w *wsClient) mustOKAndEvent(req map[string]any, key string) map[string]any {
	w.t.Helper()
	w.send(req)
	a, b := w.next(5*time.Second), w.next(5*time.Second)
	if _, isAnswer := a["ok"]; !isAnswer {
		a, b = b, a
	}
	if fmt.Sprint(a["ref"]) != fmt.Sprint(req["ref"]) || a["ok"] != true {
		w.t.Fatalf("%v: answers %v and %v, want one ok echoing its ref", req, a, b)
	}
	wantEvent(w.t, b, key)
	return a
}

// mustErr checks that req is answered with an error containing want.
func (w *wsClient) mustErr(req any, want string) {
	w.t.Helper()
	w.send(req)
	m := w.next(5 * time.Second)
	if r, ok := req.(map[string]any); ok && fmt.Sprint(m["ref"]) != fmt.Sprint(r["ref"]) {
		w.t.Fatalf("answer %v to %v: ref not echoed", m, req)
	}
	msg, _ := m["error"].(string)
	if m["ok"] != nil || !strings.Contains(msg, want) {
		w.t.Fatalf("%v: got %v, want an error containing %q", req, m, want)
	}
}

// closed waits until the server ends the socket and returns its close error.
func (w *wsClient) closed(d time.Duration) *websocket.CloseError {
	w.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case <-w.in:
		case <-w.done:
			var ce *websocket.CloseError
			if errors.As(w.err, &ce) {
				return ce
			}
			return nil
		case <-deadline:
			w.t.Fatalf("socket still open after %s", d)
		}
	}
}

// event checks that m is an event with the given type, user, room and reason.
func wantEvent(t *testing.T, m map[string]any, key string) {
	t.Helper()
	got := fmt.Sprintf("%v %v %v %v", m["type"], m["user"], m["room"], m["reason"])
	got = strings.ReplaceAll(got, "<nil>", "")
	if strings.TrimSpace(got) != key {
		t.Fatalf("got %v, want event %q", m, key)
	}
	if id, _ := m["id"].(string); id == "" {
		t.Fatalf("event %v has no id", m)
	}
}

func TestWSOps(t *testing.T) {
	n := startNode(t, noDebounce)
	w := dialWS(t, n, "", nil)
	ans := w.mustOK(map[string]any{"op": "heartbeat", "ref": "a1", "user": "alice", "room": "r"})
	if ans["interval_ms"] != 60000.0 || ans["ttl_ms"] != 150000.0 {
		t.Fatalf("heartbeat answer %v: want interval_ms 60000 and ttl_ms 150000", ans)
	}
	if on, _ := n.RoomOnline("r"); !n.User("alice").Online || on != 1 {
		t.Fatal("alice not online in r after a WebSocket heartbeat")
	}
	// A numeric ref is echoed as a number; no ref, no ref in the answer.
	if ans := w.mustOK(map[string]any{"op": "subscribe", "ref": 7, "room": "r"}); ans["ref"] != 7.0 || ans["room"] != "r" {
		t.Fatalf("subscribe answer %v", ans)
	}
	n.PostHeartbeat("bob", "r", "")
	n.PostHeartbeat("carol", "other", "")
	wantEvent(t, w.next(5*time.Second), "join bob r")
	if ans := w.mustOKAndEvent(map[string]any{"op": "leave", "ref": "l", "user": "bob", "room": "r"}, "leave bob r left"); ans["left"] != 1.0 {
		t.Fatalf("leave answer %v, want left 1", ans)
	}
	w.mustOK(map[string]any{"op": "unsubscribe", "ref": "u", "room": "r"})
	// All rooms (no api-token-file: open): carol's room too.
	if ans := w.mustOK(map[string]any{"op": "subscribe", "ref": "all"}); ans["room"] != nil {
		t.Fatalf("subscribe to all answer %v: want room null", ans)
	}
	n.PostHeartbeat("dave", "other", "")
	wantEvent(t, w.next(5*time.Second), "join dave other")
	w.send(map[string]any{"op": "heartbeat", "user": "alice", "room": "r"})
	if ans := w.next(5 * time.Second); ans["ok"] != true || ans["ref"] != nil {
		t.Fatalf("answer without ref: %v", ans)
	}

	// Errors: each answered, the socket stays open, nothing changes.
	w.mustErr(`{"op":`, "JSON object")
	w.mustErr(`[1,2]`, "JSON object")
	w.mustErr(map[string]any{"ref": 1}, "op is required")
	w.mustErr(map[string]any{"op": "dance", "ref": 2}, `unknown op "dance"`)
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 3, "user": "", "room": "r"}, "user must be 1 to 128 bytes")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 4, "user": "x", "room": strings.Repeat("r", 129)}, "room must be at most 128 bytes")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 5, "user": "x", "room": "r", "state": []int{1}}, "state must be a JSON object or null")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 5, "user": "x", "room": "r", "state": map[string]any{"big": strings.Repeat("s", 1100)}}, "state exceeds max-state-bytes (1024")
	w.mustErr(map[string]any{"op": "leave", "ref": 6, "user": "", "room": "r"}, "user must be")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 8, "room": "r", "since": "yesterday"}, "since must be an event id")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 9}, "already subscribed")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 10, "room": strings.Repeat("r", 129)}, "room must be")
	w.mustErr(map[string]any{"op": "unsubscribe", "ref": 11, "room": "nowhere"}, "not subscribed")
	w.mustErr(`{"op":"heartbeat","ref":{"x":1},"user":"x"}`, "ref must be a string or a number")
	w.mustErr(`{"op":"heartbeat","ref":12,"user":"x\ud800","room":"r"}`, "lone UTF-16 surrogate")
	if err := w.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if m := w.next(5 * time.Second); !strings.Contains(fmt.Sprint(m["error"]), "binary frames are not supported") {
		t.Fatalf("binary frame answered %v", m)
	}
	if n.User("x").Online {
		t.Fatal("a refused heartbeat created a session")
	}
	if v := n.Metric(`presenced_heartbeats_total{outcome="ok",transport="ws"}`); v != 2 {
		t.Fatalf("ws ok heartbeats metric %v, want 2", v)
	}
}

// Subscriptions resume from since like SSE: every event after the id, then live ones.
func TestWSSubscribeResume(t *testing.T) {
	n := startNode(t, noDebounce)
	w := dialWS(t, n, "", nil)
	w.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r"})
	n.PostHeartbeat("a", "r", "")
	first := w.next(5 * time.Second)
	wantEvent(t, first, "join a r")
	n.PostHeartbeat("b", "r", "")
	n.PostHeartbeat("c", "elsewhere", "")
	n.PostHeartbeat("d", "r", "")
	wantEvent(t, w.next(5*time.Second), "join b r")
	wantEvent(t, w.next(5*time.Second), "join d r")

	w2 := dialWS(t, n, "", nil)
	w2.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r", "since": first["id"]})
	wantEvent(t, w2.next(5*time.Second), "join b r")
	wantEvent(t, w2.next(5*time.Second), "join d r")
	n.PostHeartbeat("e", "r", "")
	wantEvent(t, w2.next(5*time.Second), "join e r")
	// An id from another history: reset first.
	w3 := dialWS(t, n, "", nil)
	w3.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r", "since": "1-1"})
	if m := w3.next(5 * time.Second); m["type"] != "reset" || m["reason"] != "history_lost" {
		t.Fatalf("got %v, want reset history_lost", m)
	}
}

func writeAPIToken(t *testing.T, tok string) func(*server.Config) {
	path := filepath.Join(t.TempDir(), "api-tokens")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *server.Config) { c.APITokenFile = path; c.LeaveDelay = 0 }
}

// With --api-token-file: all rooms only with a token; a room with a
// session in it on this socket, or with a token.
func TestWSSubscribeAuth(t *testing.T) {
	const tok = "api-token-0123456789abcdef"
	n := startNode(t, writeAPIToken(t, tok))
	w := dialWS(t, n, "", nil)
	w.mustErr(map[string]any{"op": "subscribe", "ref": 1}, "needs an API token")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 2, "room": "r"}, "needs a session in it")
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 3, "user": "m", "room": "r"})
	w.mustOK(map[string]any{"op": "subscribe", "ref": 4, "room": "r"})
	w.mustErr(map[string]any{"op": "subscribe", "ref": 5, "room": "s"}, "needs a session in it")
	n.PostHeartbeat("other", "r", "")
	wantEvent(t, w.next(5*time.Second), "join other r")

	bad := dialWS(t, n, "?access_token=wrong-token-0123456789", nil)
	bad.mustErr(map[string]any{"op": "subscribe", "ref": 1}, "needs an API token")
	for name, ws := range map[string]*wsClient{
		"query":  dialWS(t, n, "?access_token="+tok, nil),
		"header": dialWS(t, n, "", http.Header{"Authorization": {"Bearer " + tok}}),
	} {
		ws.mustOK(map[string]any{"op": "subscribe", "ref": name})
		ws.mustOK(map[string]any{"op": "subscribe", "ref": name, "room": "s"})
		n.PostHeartbeat("x-"+name, "s", "")
		wantEvent(t, ws.next(5*time.Second), "join x-"+name+" s")
	}
}

// With --secret-file, WebSocket heartbeats and leaves need tokens like HTTP.
func TestWSTokens(t *testing.T) {
	n := startNode(t, withSecret(t))
	w := dialWS(t, n, "", nil)
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 1, "user": "u", "room": "r"}, "token is required")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 2, "user": "u", "room": "r", "token": "junk"}, "token is malformed")
	tok, err := n.Keys.Mint("", "u", "", false, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 3, "user": "u", "room": "r", "token": string(tok)})
	w.mustErr(map[string]any{"op": "leave", "ref": 4, "user": "u", "room": "r"}, "token is required")
	w.mustOK(map[string]any{"op": "leave", "ref": 5, "user": "u", "room": "r", "token": string(tok)})
	if n.User("u").Online {
		t.Fatal("u still online after a WebSocket leave")
	}
}

// Closing a socket ends its sessions with one disconnect leave, the
// --leave-delay late; a reconnect within the delay (a page reload) gives
// no events at all.
func TestWSDisconnectLeave(t *testing.T) {
	const delay = 400 * time.Millisecond
	n := startNode(t, func(c *server.Config) { c.LeaveDelay = delay })
	s := openStream(t, n.Base, "?room=r", "")

	a := dialWS(t, n, "", nil)
	a.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "a", "room": "r"})
	if ev := s.next(t, 5*time.Second); ev.key() != "join a r " {
		t.Fatalf("got %+v", ev)
	}
	t0 := time.Now()
	a.close()
	testkit.Eventually(t, 5*time.Second, "a offline after its socket closed", func() bool { return !n.User("a").Online })
	ev := s.next(t, 5*time.Second)
	if ev.key() != "leave a r disconnect" {
		t.Fatalf("got %+v, want leave a r disconnect", ev)
	}
	if d := time.Since(t0); d < delay {
		t.Fatalf("disconnect leave after %s, before the %s delay", d, delay)
	}

	// A reload: b's socket closes and a new one heartbeats within the delay.
	b := dialWS(t, n, "", nil)
	b.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "b", "room": "r"})
	if ev := s.next(t, 5*time.Second); ev.key() != "join b r " {
		t.Fatalf("got %+v", ev)
	}
	b.close()
	testkit.Eventually(t, 5*time.Second, "b offline after its socket closed", func() bool { return !n.User("b").Online })
	testkit.Eventually(t, 5*time.Second, "b's leave held", func() bool { return n.Metric("presenced_leaves_held") >= 1 })
	b2 := dialWS(t, n, "", nil)
	b2.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "b", "room": "r"})
	// The held leave goes when the rejoin cancels it, or (wrongly) when it
	// is emitted at its due time; then the marker comes after the reload:
	// had the reload produced events, they would come before it.
	testkit.Eventually(t, 5*time.Second, "no leave held", func() bool { return n.Metric("presenced_leaves_held") == 0 })
	n.PostHeartbeat("marker", "r", "")
	if ev := s.next(t, 5*time.Second); ev.key() != "join marker r " {
		t.Fatalf("got %+v, want join of marker (the reload must produce nothing)", ev)
	}
	// b2's explicit leave is a left, and its socket's close then ends nothing more.
	b2.mustOK(map[string]any{"op": "leave", "ref": 2, "user": "b", "room": "r"})
	b2.close()
	n.PostHeartbeat("marker2", "r", "")
	if ev := s.next(t, 5*time.Second); ev.key() != "join marker2 r " {
		t.Fatalf("got %+v", ev)
	}
	if ev := s.next(t, 5*time.Second); ev.key() != "leave b r left" {
		t.Fatalf("got %+v, want leave b r left", ev)
	}
	if v := n.Metric(`presenced_leaves_total{reason="disconnect"}`); v != 2 {
		t.Fatalf("disconnect leaves metric %v, want 2 (a, and b before its reload)", v)
	}
}

// A peer that stops answering pings is gone within 2 ping intervals, and
// its sessions end; one that answers stays for many intervals.
func TestWSPingTimeout(t *testing.T) {
	const ping = 200 * time.Millisecond
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.WSPingInterval = ping })
	alive := dialWS(t, n, "", nil) // the library answers pings while reading
	alive.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r"})

	c, err := tryDialWS(n, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetPingHandler(func(string) error { return nil }) // stops answering
	dead := &wsClient{t: t, c: c, in: make(chan map[string]any, 16), done: make(chan struct{})}
	go dead.read()
	dead.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "silent", "room": "r"})
	t0 := time.Now()
	wantEvent(t, alive.next(5*time.Second), "join silent r")
	// The slack is for a loaded -race run; a peer kept until its read
	// deadline (minutes) or forever still fails.
	dead.closed(2*ping + 3*time.Second)
	if d := time.Since(t0); d > 2*ping+2*time.Second {
		t.Fatalf("silent peer dropped after %s, want within 2 x %s (plus slack)", d, ping)
	}
	wantEvent(t, alive.next(5*time.Second), "leave silent r disconnect")
	testkit.Eventually(t, 2*time.Second, "ping timeout counted", func() bool {
		return n.Metric(`presenced_ws_closed_total{reason="ping_timeout"}`) == 1
	})
	// The answering socket outlived 10 ping intervals and still gets events.
	time.Sleep(10 * ping)
	n.PostHeartbeat("late", "r", "")
	wantEvent(t, alive.next(5*time.Second), "join late r")
	if v := n.Metric("presenced_ws_connections"); v != 1 {
		t.Fatalf("presenced_ws_connections %v, want 1", v)
	}
}

func TestWSLimits(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		noDebounce(c)
		c.MaxWSConns = 3
		c.WSMaxMessageBytes = 256
		c.WSMessageRate = 5
		c.WSMaxSubscriptions = 2
		c.WSMaxSessions = 2
	})
	w := dialWS(t, n, "", nil)
	// Subscriptions per socket.
	w.mustOK(map[string]any{"op": "subscribe", "ref": 1})
	w.mustOK(map[string]any{"op": "subscribe", "ref": 2, "room": "a"})
	w.mustErr(map[string]any{"op": "subscribe", "ref": 3, "room": "b"}, "too many subscriptions on this socket (ws-max-subscriptions 2)")
	w.mustOK(map[string]any{"op": "unsubscribe", "ref": 4, "room": "a"})
	w.mustOK(map[string]any{"op": "subscribe", "ref": 5, "room": "b"})
	// Sessions per socket.
	w = dialWS(t, n, "", nil)
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 6, "user": "u1", "room": "r"})
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 7, "user": "u2", "room": "r"})
	time.Sleep(time.Second) // refill the rate bucket (5/s, burst 10)
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 8, "user": "u3", "room": "r"}, "too many sessions (ws-max-sessions 2)")
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 9, "user": "u1", "room": "r"}) // a refresh is fine
	if n.User("u3").Online {
		t.Fatal("a refused heartbeat created a session")
	}

	// Message size: closed with 1009.
	big := dialWS(t, n, "", nil)
	big.send(`{"op":"heartbeat","user":"` + strings.Repeat("x", 300) + `"}`)
	if ce := big.closed(5 * time.Second); ce == nil || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("oversized message: close %v, want 1009", ce)
	}

	// Connections: the 4th is refused with 503 while 3 are open.
	testkit.Eventually(t, 5*time.Second, "the big socket's slot freed", func() bool { return n.Metric("presenced_ws_connections") == 2 })
	c2 := dialWS(t, n, "", nil)
	c2.mustErr(map[string]any{"op": "unsubscribe", "ref": 1, "room": "x"}, "not subscribed") // c2 is counted now
	if _, err := tryDialWS(n, "", nil); err == nil || !strings.Contains(err.Error(), "status 503") {
		t.Fatalf("4th connection: %v, want refused with 503", err)
	}
	resp, err := http.Get(n.Base + "/v1/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	w.close()
	testkit.Eventually(t, 5*time.Second, "a slot freed", func() bool { return n.Metric("presenced_ws_connections") == 2 })

	// Message rate: a flood closes the socket with 1008 naming the flag.
	for i := 0; i < 40; i++ {
		if err := c2.c.WriteMessage(websocket.TextMessage, []byte(`{"op":"unsubscribe","room":"x"}`)); err != nil {
			break
		}
	}
	if ce := c2.closed(5 * time.Second); ce == nil || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "ws-message-rate") {
		t.Fatalf("flood: close %v, want 1008 naming ws-message-rate", ce)
	}
	for _, l := range []string{"max_ws_conns", "ws_max_message_bytes", "ws_message_rate", "ws_max_subscriptions", "ws_max_sessions"} {
		if v := n.Metric(`presenced_ws_limited_total{limit="` + l + `"}`); v < 1 {
			t.Errorf("presenced_ws_limited_total{limit=%q} = %v, want >= 1", l, v)
		}
	}
	if v := n.Metric(`presenced_ws_closed_total{reason="message_size"}`); v != 1 {
		t.Errorf("closed by message size %v, want 1", v)
	}
}

// Shutdown closes sockets with 1001 (going away).
func TestWSShutdown(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.UDPAddr = "" })
	w := dialWS(t, n, "", nil)
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "u", "room": "r"})
	if err := n.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if ce := w.closed(5 * time.Second); ce == nil || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("close %v, want 1001", ce)
	}
}

// /ui serves the live page (guarded by --api-token-file), presenced.js and
// the demo page (not guarded: they hold no data).
func TestUIRoutes(t *testing.T) {
	const tok = "ui-token-0123456789abcdef"
	n := startNode(t, writeAPIToken(t, tok))
	get := func(path string, h http.Header) (int, string, string) {
		req, _ := http.NewRequest("GET", n.Base+path, nil)
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	for _, c := range []struct {
		path   string
		h      http.Header
		status int
		ctype  string
		body   string
	}{
		{"/ui", nil, 401, "application/json", "access_token"},
		{"/ui/?access_token=wrong-0123456789abcdef", nil, 401, "application/json", "access_token"},
		{"/ui?access_token=" + tok, nil, 200, "text/html; charset=utf-8", "Top rooms"},
		{"/ui/", http.Header{"Authorization": {"Bearer " + tok}}, 200, "text/html; charset=utf-8", "Live events"},
		{"/ui/presenced.js", nil, 200, "text/javascript; charset=utf-8", "export class Presence"},
		{"/ui/demo", nil, 200, "text/html; charset=utf-8", "live members"},
		{"/ui/nothing", nil, 404, "application/json", "unknown path"},
		{"/uix", nil, 404, "application/json", "unknown path"},
	} {
		status, ctype, body := get(c.path, c.h)
		if status != c.status || ctype != c.ctype || !strings.Contains(body, c.body) {
			t.Errorf("GET %s: %d %q %.80q, want %d %q containing %q", c.path, status, ctype, body, c.status, c.ctype, c.body)
		}
	}
}

// WebSocket heartbeats carry state as HTTP ones do: set on join, an update
// on a real change, omitted keeps it, null clears it.
func TestWSState(t *testing.T) {
	n := startNode(t, noDebounce)
	obs := dialWS(t, n, "", nil)
	obs.mustOK(map[string]any{"op": "subscribe", "ref": 0, "room": "r"})
	w := dialWS(t, n, "", nil)
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "u", "room": "r", "state": map[string]any{"status": "here"}})
	ev := obs.next(5 * time.Second)
	wantEvent(t, ev, "join u r")
	if fmt.Sprint(ev["state"]) != "map[status:here]" {
		t.Fatalf("join state %v", ev["state"])
	}
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 2, "user": "u", "room": "r"})                                            // keeps
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 3, "user": "u", "room": "r", "state": map[string]any{"status": "here"}}) // no change
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 4, "user": "u", "room": "r", "state": map[string]any{"status": "away"}})
	ev = obs.next(5 * time.Second)
	wantEvent(t, ev, "update u r")
	if fmt.Sprint(ev["state"]) != "map[status:away]" {
		t.Fatalf("update state %v", ev["state"])
	}
	var mem struct {
		Members []struct {
			User  string         `json:"user"`
			State map[string]any `json:"state"`
		} `json:"members"`
	}
	n.Do("GET", "/v1/rooms/r/members", "", &mem)
	if len(mem.Members) != 1 || fmt.Sprint(mem.Members[0].State) != "map[status:away]" {
		t.Fatalf("members %+v", mem)
	}
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 5, "user": "u", "room": "r", "state": nil})
	ev = obs.next(5 * time.Second)
	wantEvent(t, ev, "update u r")
	if ev["state"] != nil {
		t.Fatalf("cleared state %v", ev["state"])
	}
}

// /ui and its files are served with Referrer-Policy: no-referrer, so the
// ?access_token= the page may be opened with never leaves in a Referer.
func TestUIReferrerPolicy(t *testing.T) {
	n := startNode(t, nil)
	for _, path := range []string{"/ui", "/ui/presenced.js", "/ui/demo"} {
		resp, err := http.Get(n.Base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Fatalf("GET %s: %d, Referrer-Policy %q", path, resp.StatusCode, resp.Header.Get("Referrer-Policy"))
		}
	}
}
