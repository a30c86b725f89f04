package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
)

type sessionOut struct {
	Room     string          `json:"room"`
	State    json.RawMessage `json:"state"`
	LastSeen string          `json:"last_seen"`
}

type userWithSessions struct {
	Online   bool         `json:"online"`
	Rooms    []string     `json:"rooms"`
	Sessions []sessionOut `json:"sessions"`
}

// State set by a heartbeat shows in members, user and bulk status; omitted
// keeps it, null clears it, formatting alone is no change; a change is one
// update event; bad or oversized state is a 400 naming the limit and
// changes nothing; it survives a restart through the write-ahead log.
func TestSessionState(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *server.Config) { noDebounce(c); c.DataDir = dir; c.MaxStateBytes = 64 }
	n := startNode(t, cfg)
	s := openStream(t, n.Base, "?room=r", "")
	post := func(body string) int { return n.Do("POST", "/v1/heartbeat", body, nil) }
	if c := post(`{"user":"a","room":"r","state":{"status":"away", "device":"ios"}}`); c != 200 {
		t.Fatalf("heartbeat with state: %d", c)
	}
	ev := s.next(t, 5*time.Second)
	if ev.Type != "join" || string(ev.State) != `{"status":"away","device":"ios"}` {
		t.Fatalf("join = %+v (state %s)", ev, ev.State)
	}
	members := func() json.RawMessage {
		var out struct {
			Members []struct {
				User  string          `json:"user"`
				State json.RawMessage `json:"state"`
			} `json:"members"`
		}
		n.Do("GET", "/v1/rooms/r/members", "", &out)
		if len(out.Members) != 1 {
			t.Fatalf("members %+v", out)
		}
		return out.Members[0].State
	}
	if got := string(members()); got != `{"status":"away","device":"ios"}` {
		t.Fatalf("member state %s", got)
	}
	// Kept when omitted, unchanged when only formatted differently: no events.
	post(`{"user":"a","room":"r"}`)
	post(`{"user":"a","room":"r","state":{ "status" : "away","device":"ios" }}`)
	// Too large, or not an object: 400 naming the limit, nothing changes.
	big := `{"user":"a","room":"r","state":{"x":"` + strings.Repeat("y", 80) + `"}}`
	var e struct{ Error string }
	if c := n.Do("POST", "/v1/heartbeat", big, &e); c != 400 || !strings.Contains(e.Error, "max-state-bytes") {
		t.Fatalf("oversized state: %d %q", c, e.Error)
	}
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"a","room":"r","state":[1]}`, &e); c != 400 || !strings.Contains(e.Error, "state") {
		t.Fatalf("array state: %d %q", c, e.Error)
	}
	var batch struct {
		Accepted int `json:"accepted"`
		Rejected []struct {
			Index int    `json:"index"`
			Error string `json:"error"`
		} `json:"rejected"`
	}
	n.Do("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"b","room":"r","state":{"k":1}},{"user":"a","room":"r","state":"no"}]}`, &batch)
	if batch.Accepted != 1 || len(batch.Rejected) != 1 || batch.Rejected[0].Index != 1 {
		t.Fatalf("batch %+v", batch)
	}
	// The change: one update event, after b's join.
	post(`{"user":"a","room":"r","state":{"status":"online"}}`)
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.User != "b" || string(ev.State) != `{"k":1}` {
		t.Fatalf("want b's join with state, got %+v", ev)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.User != "a" || string(ev.State) != `{"status":"online"}` {
		t.Fatalf("want a's update, got %+v (state %s)", ev, ev.State)
	}
	var u userWithSessions
	n.Do("GET", "/v1/users/a", "", &u)
	if !u.Online || len(u.Sessions) != 1 || u.Sessions[0].Room != "r" || string(u.Sessions[0].State) != `{"status":"online"}` || u.Sessions[0].LastSeen == "" {
		t.Fatalf("user a: %+v", u)
	}
	var bulk struct{ Users []userWithSessions }
	n.Do("POST", "/v1/status", `{"users":["a","b"]}`, &bulk)
	if len(bulk.Users) != 2 || string(bulk.Users[1].Sessions[0].State) != `{"k":1}` {
		t.Fatalf("bulk: %+v", bulk)
	}
	// A UDP heartbeat keeps the state.
	uc := n.UDPClient()
	uc.Send(uc.Request(1, true, hb("a", "r", "")), 2*time.Second)
	n.Do("GET", "/v1/users/a", "", &u)
	if string(u.Sessions[0].State) != `{"status":"online"}` {
		t.Fatalf("state after a UDP heartbeat: %s", u.Sessions[0].State)
	}
	// Survives a restart.
	if err := n.Srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, cfg)
	n2.Do("GET", "/v1/users/a", "", &u)
	if !u.Online || string(u.Sessions[0].State) != `{"status":"online"}` {
		t.Fatalf("after restart: %+v", u)
	}
	// null clears it: an update with state null.
	s2 := openStream(t, n2.Base, "?room=r", "")
	n2.Do("POST", "/v1/heartbeat", `{"user":"a","room":"r","state":null}`, nil)
	if ev := s2.next(t, 5*time.Second); ev.Type != "update" || string(ev.State) != "null" {
		t.Fatalf("clear: %+v", ev)
	}
	n2.Do("GET", "/v1/users/a", "", &u)
	if string(u.Sessions[0].State) != "null" {
		t.Fatalf("after clear: %s", u.Sessions[0].State)
	}
}
