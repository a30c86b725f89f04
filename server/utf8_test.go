package server_test

import (
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/shardmap"
)

// rawGet returns the status and the raw body of GET path.
func rawGet(t *testing.T, n *node, path string) (int, []byte) {
	t.Helper()
	resp, err := n.HTTP.Get(n.Base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, b
}

// A state holding a byte that is not UTF-8 is refused with 400 naming
// state, over HTTP, in a batch and over WebSocket, and changes nothing: a
// browser would drop the socket that carries it.
func TestStateInvalidUTF8Refused(t *testing.T) {
	n := startNode(t, noDebounce)
	s := openStream(t, n.Base, "?room=r", "")
	var e struct{ Error string }
	if c := n.Do("POST", "/v1/heartbeat", "{\"user\":\"a\",\"room\":\"r\",\"state\":{\"n\":\"\xff\"}}", &e); c != 400 || !strings.Contains(e.Error, "state") || !strings.Contains(e.Error, "UTF-8") {
		t.Fatalf("HTTP state with 0xff: %d %q, want 400 naming state", c, e.Error)
	}
	if c := n.Do("POST", "/v1/heartbeat", "{\"user\":\"a\",\"room\":\"r\",\"state\":{\"\xfe\":1}}", &e); c != 400 || !strings.Contains(e.Error, "state") {
		t.Fatalf("HTTP state with 0xfe in a key: %d %q, want 400 naming state", c, e.Error)
	}
	var batch struct {
		Accepted int `json:"accepted"`
		Rejected []struct {
			Index int    `json:"index"`
			Error string `json:"error"`
		} `json:"rejected"`
	}
	n.Do("POST", "/v1/heartbeats", "{\"heartbeats\":[{\"user\":\"b\",\"room\":\"r\",\"state\":{\"n\":\"ok\"}},{\"user\":\"a\",\"room\":\"r\",\"state\":{\"n\":\"x\xc3\"}}]}", &batch)
	if batch.Accepted != 1 || len(batch.Rejected) != 1 || batch.Rejected[0].Index != 1 || !strings.Contains(batch.Rejected[0].Error, "state") {
		t.Fatalf("batch: %+v, want item 1 refused naming state", batch)
	}
	w := dialWS(t, n, "", nil)
	w.send("{\"op\":\"heartbeat\",\"ref\":1,\"user\":\"a\",\"room\":\"r\",\"state\":{\"n\":\"\xff\"}}")
	if m := w.next(5 * time.Second); m["ref"] != float64(1) || !strings.Contains(m["error"].(string), "state") {
		t.Fatalf("WS state with 0xff: %v, want an error naming state", m)
	}
	// Nothing changed: b's join is the only event, a is not a member.
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.User != "b" {
		t.Fatalf("want b's join, got %+v", ev)
	}
	if u := n.User("a"); u.Online {
		t.Fatalf("a online after refused heartbeats: %+v", u)
	}
}

// A state with invalid UTF-8 written by an earlier release (here straight
// into the table, hence the log) is served as valid UTF-8 JSON after a
// restart: the invalid bytes read as U+FFFD in members, user and status.
func TestStoredInvalidUTF8StateServedValid(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *server.Config) { noDebounce(c); c.DataDir = dir }
	n := startNode(t, cfg)
	now := time.Now().UnixMilli()
	if _, err := n.Srv.TableForTest().TouchState([]byte("eve"), []byte("r"), now, 150_000, shardmap.StateOp{Set: true, State: []byte("{\"n\":\"a\xffb\"}")}); err != nil {
		t.Fatal(err)
	}
	if err := n.Srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, cfg)
	for _, path := range []string{"/v1/rooms/r/members", "/v1/users/eve"} {
		c, b := rawGet(t, n2, path)
		if c != 200 || !utf8.Valid(b) || !strings.Contains(string(b), `"a`+"\uFFFD"+`b"`) {
			t.Errorf("GET %s: %d %q, want valid UTF-8 with U+FFFD in the state", path, c, b)
		}
	}
	resp, err := n2.HTTP.Post(n2.Base+"/v1/status", "application/json", strings.NewReader(`{"users":["eve"]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !utf8.Valid(b) || !strings.Contains(string(b), "\uFFFD") {
		t.Errorf("POST /v1/status: %q, want valid UTF-8 with U+FFFD", b)
	}
}

// A WebSocket message whose user or room is not UTF-8 is refused naming the
// field, as over HTTP, instead of being read with U+FFFD in place of the
// bad byte (which merged two different ids into one session).
func TestWSInvalidUTF8IDsRefused(t *testing.T) {
	n := startNode(t, noDebounce)
	w := dialWS(t, n, "", nil)
	for i, c := range []struct{ msg, want string }{
		{"{\"op\":\"heartbeat\",\"ref\":1,\"user\":\"bad\xffid\",\"room\":\"r\"}", "user must be"},
		{"{\"op\":\"heartbeat\",\"ref\":2,\"user\":\"bad\xfeid\",\"room\":\"r\"}", "user must be"},
		{"{\"op\":\"heartbeat\",\"ref\":3,\"user\":\"u\",\"room\":\"r\xff\"}", "room must be"},
		{"{\"op\":\"leave\",\"ref\":4,\"user\":\"bad\xffid\",\"room\":\"r\"}", "user must be"},
		{"{\"op\":\"subscribe\",\"ref\":5,\"room\":\"r\xff\"}", "room must be"},
	} {
		w.send(c.msg)
		m := w.next(5 * time.Second)
		if msg, _ := m["error"].(string); m["ref"] != float64(i+1) || !strings.Contains(msg, c.want) {
			t.Errorf("%q: %v, want an error with ref %d containing %q", c.msg, m, i+1, c.want)
		}
	}
	// The ref itself is not echoed when it is not UTF-8.
	w.send("{\"op\":\"heartbeat\",\"ref\":\"\xff\",\"user\":\"u\",\"room\":\"r\"}")
	if m := w.next(5 * time.Second); m["ref"] != nil || m["error"] == nil {
		t.Errorf("ref not UTF-8: %v, want an error without ref", m)
	}
	var mem struct{ Members []struct{ User string } }
	n.Do("GET", "/v1/rooms/r/members", "", &mem)
	if len(mem.Members) != 0 {
		t.Fatalf("members %+v: a refused id joined", mem.Members)
	}
	if got := n.Metric(`presenced_heartbeats_total{outcome="bad_user",transport="ws"}`); got != 2 {
		t.Errorf("ws bad_user heartbeats = %v, want 2", got)
	}
}

// A message with a field of the wrong type is answered with its ref and the
// field's name (a client waiting on the ref does not time out), and a
// state nested past the depth limit is refused on both transports, the
// HTTP answer naming the limit.
func TestWSFieldErrorKeepsRefAndDepthLimit(t *testing.T) {
	n := startNode(t, noDebounce)
	w := dialWS(t, n, "", nil)
	w.mustErr(map[string]any{"op": "heartbeat", "ref": 7, "user": "u", "room": 5}, "room must be a string")
	w.mustErr(map[string]any{"op": "heartbeat", "ref": "x", "user": []int{1}, "room": "r"}, "user must be a string")
	deep := strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100)
	w.mustErr(`{"op":"heartbeat","ref":8,"user":"u","room":"r","state":`+deep+`}`, "64")
	var e struct{ Error string }
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"u","room":"r","state":`+deep+`}`, &e); c != 400 || !strings.Contains(e.Error, "64") || !strings.Contains(e.Error, "deep") {
		t.Fatalf("HTTP deep state: %d %q, want 400 naming the depth limit", c, e.Error)
	}
	if u := n.User("u"); u.Online {
		t.Fatalf("u online after refused heartbeats")
	}
}
