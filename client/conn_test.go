package client_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/wire"
)

// sentItem is one item a fake server received.
type sentItem struct {
	op         wire.Op
	user, room string
	conn       string
	flagged    bool // the datagram had wire.FlagConn
}

// fakeUDP is a UDP server that records every item it decodes and
// acknowledges each with status ok and a 200 ms interval.
type fakeUDP struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	items []sentItem
	wg    sync.WaitGroup
}

func startFakeUDP(t *testing.T) *fakeUDP {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUDP{pc: pc}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		buf := make([]byte, wire.MaxDatagram)
		var d wire.Datagram
		for {
			n, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if d.Decode(buf[:n]) != nil {
				continue
			}
			f.mu.Lock()
			for _, it := range d.Items() {
				f.items = append(f.items, sentItem{it.Op, string(it.User), string(it.Room), string(it.Conn), buf[2]&wire.FlagConn != 0})
			}
			f.mu.Unlock()
			rep, err := wire.AppendReply(nil, &d, make([]wire.Status, len(d.Items())), 200, 3000)
			if err == nil {
				pc.WriteToUDP(rep, from)
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeUDP) received() []sentItem {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentItem(nil), f.items...)
}

// fakeHTTP answers heartbeats and leaves with 200 and records their paths
// and bodies.
type fakeHTTP struct {
	mu     sync.Mutex
	paths  []string
	bodies []map[string]json.RawMessage
}

func (f *fakeHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		http.Error(w, `{"error":"body is not a JSON object"}`, 400)
		return
	}
	f.mu.Lock()
	f.paths = append(f.paths, r.URL.Path)
	f.bodies = append(f.bodies, m)
	f.mu.Unlock()
	if r.URL.Path == "/v1/leave" {
		w.Write([]byte(`{"left":1}`))
		return
	}
	w.Write([]byte(`{"interval_ms":200,"ttl_ms":3000}`))
}

func jsonString(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s is not a JSON string: %v", raw, err)
	}
	return s
}

// Every heartbeat and the leave name the heartbeater's connection, over
// UDP (an item with wire.FlagConn) and over HTTP (the "conn" member), so
// a leave ends this connection only and not the user's other devices.
func TestConnSentWithEveryHeartbeatAndLeave(t *testing.T) {
	t.Run("udp", func(t *testing.T) {
		f := startFakeUDP(t)
		h := start(t, client.Config{UDPAddr: f.pc.LocalAddr().String(), User: "alice", Room: "lobby"})
		testkit.Eventually(t, 10*time.Second, "3 acks", func() bool { return h.Status().Acked >= 3 })
		if err := h.Leave(context.Background()); err != nil {
			t.Fatalf("Leave: %v", err)
		}
		got := f.received()
		if len(got) < 4 || got[len(got)-1].op != wire.OpLeave {
			t.Fatalf("received %+v, want heartbeats then a leave", got)
		}
		for i, it := range got {
			if it.conn != h.Conn() || !it.flagged || it.user != "alice" || it.room != "lobby" {
				t.Errorf("item %d = %+v, want conn %q with the connection flag", i, it, h.Conn())
			}
		}
	})
	t.Run("http", func(t *testing.T) {
		f := &fakeHTTP{}
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		h := start(t, client.Config{BaseURL: srv.URL, User: "alice", Room: "lobby", Conn: "phone-1",
			State: map[string]string{"status": "online"}})
		testkit.Eventually(t, 10*time.Second, "2 acks", func() bool { return h.Status().Acked >= 2 })
		if err := h.Leave(context.Background()); err != nil {
			t.Fatalf("Leave: %v", err)
		}
		f.mu.Lock()
		paths, bodies := append([]string(nil), f.paths...), append([]map[string]json.RawMessage(nil), f.bodies...)
		f.mu.Unlock()
		if len(paths) < 3 || paths[0] != "/v1/heartbeat" || paths[len(paths)-1] != "/v1/leave" {
			t.Fatalf("paths %q, want heartbeats then a leave", paths)
		}
		if h.Conn() != "phone-1" {
			t.Errorf("Conn() = %q, want Config.Conn", h.Conn())
		}
		for i, b := range bodies {
			if b["conn"] == nil || jsonString(t, b["conn"]) != "phone-1" {
				t.Errorf("%s body %d has conn %s, want \"phone-1\"", paths[i], i, b["conn"])
			}
		}
		if bodies[0]["state"] == nil {
			t.Errorf("first heartbeat has no state: %v", bodies[0])
		}
	})
}

// Each Heartbeater makes up its own connection id unless Config.Conn names
// one; Validate refuses an id the server would.
func TestConnIDs(t *testing.T) {
	f := startFakeUDP(t)
	cfg := client.Config{UDPAddr: f.pc.LocalAddr().String(), User: "bob", Room: "lobby"}
	a, b := start(t, cfg), start(t, cfg)
	if a.Conn() == b.Conn() {
		t.Fatalf("two heartbeaters share connection id %q", a.Conn())
	}
	for _, id := range []string{a.Conn(), b.Conn()} {
		if raw, err := base64.RawURLEncoding.DecodeString(id); len(id) != 16 || err != nil || len(raw) != 12 {
			t.Errorf("connection id %q is not 16 base64url characters (%v)", id, err)
		}
	}
	waitAck(t, a)
	waitAck(t, b)
	seen := map[string]bool{}
	for _, it := range f.received() {
		seen[it.conn] = true
	}
	if !seen[a.Conn()] || !seen[b.Conn()] || len(seen) != 2 {
		t.Errorf("server saw connections %v, want exactly %q and %q", seen, a.Conn(), b.Conn())
	}

	for _, c := range []struct{ conn, want string }{
		{strings.Repeat("c", 65), "Conn must be at most 64 bytes"},
		{"tab\n1", "Conn must be"},
		{"\xff", "Conn must be"},
	} {
		cfg := client.Config{BaseURL: "http://127.0.0.1:1", User: "bob", Conn: c.conn}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate with Conn %q = %v, want %q", c.conn, err, c.want)
		}
	}
	ok := client.Config{BaseURL: "http://127.0.0.1:1", User: "bob", Conn: strings.Repeat("c", 64)}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate with a 64-byte Conn: %v", err)
	}
}

// An update event's conn and connections reach Event.Conn and
// Event.Connections; a join without them leaves both empty.
func TestEventConnections(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		io.WriteString(w, "id: 1\nevent: join\ndata: {\"id\":\"1\",\"type\":\"join\",\"user\":\"alice\",\"room\":\"lobby\",\"at\":\"2026-12-07T10:00:00.000Z\",\"state\":null}\n\n")
		io.WriteString(w, "id: 2\nevent: update\ndata: {\"id\":\"2\",\"type\":\"update\",\"user\":\"alice\",\"room\":\"lobby\",\"at\":\"2026-12-07T10:00:01.000Z\","+
			"\"state\":{\"status\":\"away\"},\"conn\":\"tab-2\",\"connections\":[{\"conn\":\"\",\"state\":null},{\"conn\":\"tab-1\",\"state\":{\"status\":\"online\"}},{\"conn\":\"tab-2\",\"state\":{\"status\":\"away\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	join, err := sub.Next()
	if err != nil {
		t.Fatal(err)
	}
	if join.Type != "join" || join.Conn != "" || join.Connections != nil {
		t.Errorf("join = %+v, want no connections", join)
	}
	up, err := sub.Next()
	if err != nil {
		t.Fatal(err)
	}
	if up.Type != "update" || up.Conn != "tab-2" || len(up.Connections) != 3 {
		t.Fatalf("update = %+v, want conn tab-2 and 3 connections", up)
	}
	want := []struct{ conn, state string }{{"", ""}, {"tab-1", `{"status":"online"}`}, {"tab-2", `{"status":"away"}`}}
	for i, c := range up.Connections {
		if c.Conn != want[i].conn || string(c.State) != want[i].state || !c.LastSeen.IsZero() {
			t.Errorf("connection %d = %+v, want %+v", i, c, want[i])
		}
	}
}

// Connection decodes the connections of members and user-status sessions.
func TestConnectionDecodesMembers(t *testing.T) {
	var m struct {
		Connections []client.Connection `json:"connections"`
	}
	data := `{"user":"alice","last_seen":"2026-12-07T10:00:02.345Z","connections":[{"conn":"tab-1","state":{"s":1},"last_seen":"2026-12-07T10:00:02.345Z"},{"conn":"","state":null,"last_seen":"2026-12-07T09:59:00.000Z"}]}`
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Connections) != 2 || m.Connections[0].Conn != "tab-1" || string(m.Connections[0].State) != `{"s":1}` ||
		!m.Connections[0].LastSeen.Equal(time.Date(2026, 12, 7, 10, 0, 2, 345e6, time.UTC)) || m.Connections[1].Conn != "" {
		t.Errorf("connections = %+v", m.Connections)
	}
}

// The server's refusals about connections reach OnError as their errors:
// 429 naming --max-conns-per-session, and 400 for a connection id.
func TestConnRefusals(t *testing.T) {
	for _, c := range []struct {
		code   int
		answer string
		want   error
	}{
		{429, `{"error":"session has 16 connections: max-conns-per-session is 16"}`, client.ErrTooManyConns},
		{429, `{"error":"too many connections from this address (http-max-conns-per-ip 1024)"}`, client.ErrRateLimited},
		{400, `{"error":"conn must be 1 to 64 bytes of UTF-8 without control characters"}`, client.ErrBadID},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(c.code)
			io.WriteString(w, c.answer)
		}))
		var errs errorLog
		h := start(t, client.Config{BaseURL: srv.URL, User: "alice", Room: "lobby", OnError: errs.add})
		testkit.Eventually(t, 10*time.Second, c.answer, func() bool { return len(errs.list()) > 0 })
		h.Close()
		srv.Close()
		if !errs.has(c.want) {
			t.Errorf("%d %s: OnError got %v, want %v", c.code, c.answer, errs.list(), c.want)
		}
		if c.want != client.ErrTooManyConns && errs.has(client.ErrTooManyConns) {
			t.Errorf("%d %s read as ErrTooManyConns", c.code, c.answer)
		}
	}
}
