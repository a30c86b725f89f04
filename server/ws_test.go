package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

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
	url := "ws" + strings.TrimPrefix(n.base, "http") + "/v1/ws" + query
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
	if !n.user("alice").Online || n.roomOnline("r") != 1 {
		t.Fatal("alice not online in r after a WebSocket heartbeat")
	}
	// A numeric ref is echoed as a number; no ref, no ref in the answer.
	if ans := w.mustOK(map[string]any{"op": "subscribe", "ref": 7, "room": "r"}); ans["ref"] != 7.0 || ans["room"] != "r" {
		t.Fatalf("subscribe answer %v", ans)
	}
	n.heartbeat("bob", "r", "")
	n.heartbeat("carol", "other", "")
	wantEvent(t, w.next(5*time.Second), "join bob r")
	if ans := w.mustOK(map[string]any{"op": "leave", "ref": "l", "user": "bob", "room": "r"}); ans["left"] != 1.0 {
		t.Fatalf("leave answer %v, want left 1", ans)
	}
	wantEvent(t, w.next(5*time.Second), "leave bob r left")
	w.mustOK(map[string]any{"op": "unsubscribe", "ref": "u", "room": "r"})
	// All rooms (no api-token-file: open): carol's room too.
	if ans := w.mustOK(map[string]any{"op": "subscribe", "ref": "all"}); ans["room"] != nil {
		t.Fatalf("subscribe to all answer %v: want room null", ans)
	}
	n.heartbeat("dave", "other", "")
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
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 5, "user": "x", "room": "r", "state": map[string]any{"status": "away"}}, "state is not supported")
	w.mustErr(map[string]any{"op": "leave", "ref": 6, "user": "", "room": "r"}, "user must be")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 8, "room": "r", "since": "yesterday"}, "since must be an event id")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 9}, "already subscribed")
	w.mustErr(map[string]any{"op": "subscribe", "ref": 10, "room": strings.Repeat("r", 129)}, "room must be")
	w.mustErr(map[string]any{"op": "unsubscribe", "ref": 11, "room": "nowhere"}, "not subscribed")
	w.mustErr(`{"op":"heartbeat","ref":{"x":1},"user":"x"}`, "ref must be a string or a number")
	if err := w.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if m := w.next(5 * time.Second); !strings.Contains(fmt.Sprint(m["error"]), "binary frames are not supported") {
		t.Fatalf("binary frame answered %v", m)
	}
	if n.user("x").Online {
		t.Fatal("a refused heartbeat created a session")
	}
	if v := n.metric(`presenced_heartbeats_total{transport="ws",outcome="ok"}`); v != 2 {
		t.Fatalf("ws ok heartbeats metric %v, want 2", v)
	}
}

// Subscriptions resume from since like SSE: every event after the id, then live ones.
func TestWSSubscribeResume(t *testing.T) {
	n := startNode(t, noDebounce)
	w := dialWS(t, n, "", nil)
	w.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r"})
	n.heartbeat("a", "r", "")
	first := w.next(5 * time.Second)
	wantEvent(t, first, "join a r")
	n.heartbeat("b", "r", "")
	n.heartbeat("c", "elsewhere", "")
	n.heartbeat("d", "r", "")
	wantEvent(t, w.next(5*time.Second), "join b r")
	wantEvent(t, w.next(5*time.Second), "join d r")

	w2 := dialWS(t, n, "", nil)
	w2.mustOK(map[string]any{"op": "subscribe", "ref": 1, "room": "r", "since": first["id"]})
	wantEvent(t, w2.next(5*time.Second), "join b r")
	wantEvent(t, w2.next(5*time.Second), "join d r")
	n.heartbeat("e", "r", "")
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
	n.heartbeat("other", "r", "")
	wantEvent(t, w.next(5*time.Second), "join other r")

	bad := dialWS(t, n, "?access_token=wrong-token-0123456789", nil)
	bad.mustErr(map[string]any{"op": "subscribe", "ref": 1}, "needs an API token")
	for name, ws := range map[string]*wsClient{
		"query":  dialWS(t, n, "?access_token="+tok, nil),
		"header": dialWS(t, n, "", http.Header{"Authorization": {"Bearer " + tok}}),
	} {
		ws.mustOK(map[string]any{"op": "subscribe", "ref": name})
		ws.mustOK(map[string]any{"op": "subscribe", "ref": name, "room": "s"})
		n.heartbeat("x-"+name, "s", "")
		wantEvent(t, ws.next(5*time.Second), "join x-"+name+" s")
	}
}

// With --secret-file, WebSocket heartbeats and leaves need tokens like HTTP.
func TestWSTokens(t *testing.T) {
	n := startNode(t, withSecret(t))
	w := dialWS(t, n, "", nil)
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 1, "user": "u", "room": "r"}, "token is required")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 2, "user": "u", "room": "r", "token": "junk"}, "token is malformed")
	tok, err := n.keys.Mint("", "u", "", false, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	w.mustOK(map[string]any{"op": "heartbeat", "ref": 3, "user": "u", "room": "r", "token": string(tok)})
	w.mustErr(map[string]any{"op": "leave", "ref": 4, "user": "u", "room": "r"}, "token is required")
	w.mustOK(map[string]any{"op": "leave", "ref": 5, "user": "u", "room": "r", "token": string(tok)})
	if n.user("u").Online {
		t.Fatal("u still online after a WebSocket leave")
	}
}
