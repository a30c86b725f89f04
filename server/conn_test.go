package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/wire"
)

type connOut struct {
	Conn     string          `json:"conn"`
	State    json.RawMessage `json:"state"`
	LastSeen string          `json:"last_seen"`
}

type memberOut struct {
	User        string          `json:"user"`
	State       json.RawMessage `json:"state"`
	Connections []connOut       `json:"connections"`
}

func roomMembers(t *testing.T, n *node, room string) map[string]memberOut {
	t.Helper()
	var out struct {
		Members []memberOut `json:"members"`
	}
	if c := n.Do("GET", "/v1/rooms/"+room+"/members", "", &out); c != 200 {
		t.Fatalf("members of %s: %d", room, c)
	}
	m := map[string]memberOut{}
	for _, mb := range out.Members {
		m[mb.User] = mb
	}
	return m
}

func connIDsOf(cs []connOut) string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.Conn)
	}
	return strings.Join(ids, ",")
}

// withDelay sets --leave-delay.
func withDelay(d time.Duration) func(*server.Config) {
	return func(c *server.Config) { c.LeaveDelay = d }
}

// Two tabs of alice, each a WebSocket and so a connection of its own: the
// first tab's close is an update (alice stays, with one connection), the
// second's is the one leave.
func TestConnsTwoWebSocketTabs(t *testing.T) {
	n := startNode(t, withDelay(300*time.Millisecond))
	s := openStream(t, n.Base, "?room=doc", "")
	tab1, tab2 := dialWS(t, n, "", nil), dialWS(t, n, "", nil)
	tab1.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "alice", "room": "doc", "state": map[string]any{"tab": 1}})
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || string(ev.State) != `{"tab":1}` || ev.Conn == "" {
		t.Fatalf("first tab: %+v, want a join with tab 1's state naming its connection", ev)
	}
	tab2.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "alice", "room": "doc", "state": map[string]any{"tab": 2}})
	ev := s.next(t, 5*time.Second)
	if ev.Type != "update" || ev.Conn == "" || len(ev.Conns) != 2 || string(ev.State) != `{"tab":2}` {
		t.Fatalf("second tab: %+v, want an update with 2 connections", ev)
	}
	tab2ID := ev.Conn
	states := map[string]string{}
	for _, c := range ev.Conns {
		states[c.Conn] = string(c.State)
	}
	if states[tab2ID] != `{"tab":2}` || len(states) != 2 {
		t.Fatalf("connections %+v: each tab keeps its own state", ev.Conns)
	}
	tab1.close()
	ev = s.next(t, 5*time.Second)
	if ev.Type != "update" || ev.Reason != "disconnect" || ev.Conn == tab2ID || len(ev.Conns) != 1 || ev.Conns[0].Conn != tab2ID {
		t.Fatalf("tab 1 closed: %+v, want an update leaving tab 2's connection", ev)
	}
	mb, ok := roomMembers(t, n, "doc")["alice"]
	if !ok || len(mb.Connections) != 1 || mb.Connections[0].Conn != tab2ID || string(mb.State) != `{"tab":2}` {
		t.Fatalf("after tab 1 closed, members show %+v (present %v)", mb, ok)
	}
	tab2.close()
	ev = s.next(t, 5*time.Second)
	if ev.Type != "leave" || ev.User != "alice" || ev.Reason != "disconnect" {
		t.Fatalf("tab 2 closed: %+v, want alice's leave", ev)
	}
	if _, ok := roomMembers(t, n, "doc")["alice"]; ok {
		t.Fatal("alice still a member after her last tab closed")
	}
}

// Over HTTP: bob's phone and laptop; the laptop's leave (as the browser
// module sends it on unload) ends that connection only; status, members
// and stats show the connections; a leave without conn ends them all.
func TestConnsHTTPDevices(t *testing.T) {
	n := startNode(t, noDebounce)
	s := openStream(t, n.Base, "?room=r", "")
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"bob","room":"r","conn":"phone","state":{"d":"ios"}}`, nil); c != 200 {
		t.Fatalf("phone heartbeat: %d", c)
	}
	if c := n.Do("GET", "/v1/heartbeat?user=bob&room=r&conn=laptop", "", nil); c != 200 {
		t.Fatalf("laptop GET heartbeat: %d", c)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.Conn != "phone" {
		t.Fatalf("first: %+v", ev)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.Conn != "laptop" || len(ev.Conns) != 2 {
		t.Fatalf("second: %+v", ev)
	}
	var st struct {
		Connections int `json:"connections"`
		Sessions    int `json:"sessions"`
	}
	n.Do("GET", "/v1/stats", "", &st)
	if st.Connections != 2 || st.Sessions != 1 {
		t.Fatalf("stats %+v, want 2 connections in 1 session", st)
	}
	var us struct {
		Online   bool `json:"online"`
		Sessions []struct {
			Room        string    `json:"room"`
			Connections []connOut `json:"connections"`
		} `json:"sessions"`
	}
	n.Do("GET", "/v1/users/bob", "", &us)
	if !us.Online || len(us.Sessions) != 1 || connIDsOf(us.Sessions[0].Connections) != "phone,laptop" {
		t.Fatalf("user status %+v", us)
	}
	var left struct{ Left int }
	if c := n.Do("POST", "/v1/leave", `{"user":"bob","room":"r","conn":"laptop"}`, &left); c != 200 || left.Left != 1 {
		t.Fatalf("laptop leave: %d %+v", c, left)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.Conn != "laptop" || ev.Reason != "left" || len(ev.Conns) != 1 {
		t.Fatalf("laptop leave event: %+v", ev)
	}
	if mb, ok := roomMembers(t, n, "r")["bob"]; !ok || connIDsOf(mb.Connections) != "phone" || string(mb.State) != `{"d":"ios"}` {
		t.Fatalf("bob after the laptop left: %+v %v", mb, ok)
	}
	// A batch item may name its connection too.
	n.Do("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"bob","room":"r","conn":"tablet"}]}`, nil)
	if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.Conn != "tablet" {
		t.Fatalf("batch item with conn: %+v", ev)
	}
	// No conn: every connection ends, one leave.
	if c := n.Do("POST", "/v1/leave", `{"user":"bob","room":"r"}`, &left); c != 200 || left.Left != 1 {
		t.Fatalf("leave without conn: %d %+v", c, left)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "leave" || ev.User != "bob" {
		t.Fatalf("leave without conn: %+v", ev)
	}
	if n.User("bob").Online {
		t.Fatal("bob online after a leave without conn")
	}
}

// A connection that leaves and comes back within --leave-delay (a reload)
// produces no event; the events that follow still arrive.
func TestConnsReloadWithinDelay(t *testing.T) {
	n := startNode(t, withDelay(2*time.Second))
	s := openStream(t, n.Base, "?room=r", "")
	n.Do("POST", "/v1/heartbeat", `{"user":"c","room":"r","conn":"t1"}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"c","room":"r","conn":"t2"}`, nil)
	s.next(t, 5*time.Second) // join
	s.next(t, 5*time.Second) // update: t2 started
	n.Do("POST", "/v1/leave", `{"user":"c","room":"r","conn":"t1"}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"c","room":"r","conn":"t1"}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"marker","room":"r"}`, nil)
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.User != "marker" {
		t.Fatalf("after a reload within the delay: %+v, want only the marker's join", ev)
	}
	// and no held update comes out after the delay either
	time.Sleep(2500 * time.Millisecond)
	n.Do("POST", "/v1/heartbeat", `{"user":"marker2","room":"r"}`, nil)
	if ev := s.next(t, 5*time.Second); ev.User != "marker2" {
		t.Fatalf("after the delay: %+v, want only the second marker's join", ev)
	}
}

// Bad or too many connections: 400 naming conn, 429 naming the limit, and
// nothing changes.
func TestConnsLimits(t *testing.T) {
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.Map.MaxConnsPerSession = 2 })
	var e struct{ Error string }
	long := strings.Repeat("c", 65)
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"d","room":"r","conn":"`+long+`"}`, &e); c != 400 || !strings.Contains(e.Error, "conn") {
		t.Fatalf("65-byte conn: %d %q", c, e.Error)
	}
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"d","room":"r","conn":"a\u0001b"}`, &e); c != 400 || !strings.Contains(e.Error, "conn") {
		t.Fatalf("control character in conn: %d %q", c, e.Error)
	}
	if n.User("d").Online {
		t.Fatal("a refused heartbeat created a session")
	}
	n.Do("POST", "/v1/heartbeat", `{"user":"d","room":"r","conn":"a"}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"d","room":"r","conn":"b"}`, nil)
	if c := n.Do("POST", "/v1/heartbeat", `{"user":"d","room":"r","conn":"c"}`, &e); c != 429 || !strings.Contains(e.Error, "max-conns-per-session") {
		t.Fatalf("third connection: %d %q", c, e.Error)
	}
	if v := n.Metric(`presenced_heartbeats_total{outcome="too_many_conns",transport="http"}`); v != 1 {
		t.Fatalf("too_many_conns metric %v", v)
	}
	if v := n.Metric(`presenced_connections`); v != 2 {
		t.Fatalf("presenced_connections %v, want 2", v)
	}
}

// Connections survive a restart through the write-ahead log.
func TestConnsDurable(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *server.Config) { noDebounce(c); c.DataDir = dir }
	n := startNode(t, cfg)
	n.Do("POST", "/v1/heartbeat", `{"user":"e","room":"r","conn":"t1","state":{"t":1}}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"e","room":"r","conn":"t2","state":{"t":2}}`, nil)
	n.Do("POST", "/v1/heartbeat", `{"user":"plain","room":"r","state":{"p":1}}`, nil)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	ms := roomMembers(t, n, "r")
	e, p := ms["e"], ms["plain"]
	if connIDsOf(e.Connections) != "t1,t2" || string(e.State) != `{"t":2}` || string(e.Connections[0].State) != `{"t":1}` {
		t.Fatalf("e after restart: %+v", e)
	}
	if connIDsOf(p.Connections) != "" || string(p.State) != `{"p":1}` {
		t.Fatalf("plain after restart: %+v", p)
	}
}

// UDP with and without a connection id: items naming a connection are
// connections of their own, a datagram without the flag speaks for the
// default connection, a leave naming one ends it alone, and one connection
// too many is status too_many_conns.
func TestConnsUDP(t *testing.T) {
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.Map.MaxConnsPerSession = 3 })
	uc := n.UDPClient()
	s := openStream(t, n.Base, "?room=r", "")
	send := func(items ...wire.Item) []wire.Status {
		t.Helper()
		var rep wire.Reply
		b := uc.Send(uc.Request(7, true, items...), 5*time.Second)
		if err := rep.Decode(b); err != nil {
			t.Fatalf("reply %x: %v", b, err)
		}
		return rep.Statuses()
	}
	hb := func(conn string) wire.Item {
		return wire.Item{Op: wire.OpHeartbeat, User: []byte("u"), Room: []byte("r"), Conn: []byte(conn)}
	}
	if st := send(hb("")); st[0] != wire.StatusOK {
		t.Fatalf("without a connection id: %v", st)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.Conn != "" {
		t.Fatalf("join %+v", ev)
	}
	if st := send(hb("phone"), hb("watch")); st[0] != wire.StatusOK || st[1] != wire.StatusOK {
		t.Fatalf("with connection ids: %v", st)
	}
	for _, c := range []string{"phone", "watch"} {
		if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.Conn != c {
			t.Fatalf("update for %s: %+v", c, ev)
		}
	}
	if mb := roomMembers(t, n, "r")["u"]; connIDsOf(mb.Connections) != ",phone,watch" {
		t.Fatalf("connections %+v", mb.Connections)
	}
	if st := send(hb("tablet")); st[0] != wire.StatusTooManyConns {
		t.Fatalf("fourth connection: %v, want too_many_conns", st)
	}
	if st := send(wire.Item{Op: wire.OpLeave, User: []byte("u"), Room: []byte("r"), Conn: []byte("phone")}); st[0] != wire.StatusOK {
		t.Fatalf("leave of phone: %v", st)
	}
	if ev := s.next(t, 5*time.Second); ev.Type != "update" || ev.Conn != "phone" || ev.Reason != "left" || len(ev.Conns) != 2 {
		t.Fatalf("phone's leave: %+v", ev)
	}
	if !n.User("u").Online {
		t.Fatal("u offline after one of three connections left")
	}
	// A leave without a connection id ends them all.
	send(wire.Item{Op: wire.OpLeave, User: []byte("u"), Room: []byte("r")})
	if ev := s.next(t, 5*time.Second); ev.Type != "leave" || ev.Reason != "left" {
		t.Fatalf("leave without conn: %+v", ev)
	}
}
