// Package servertest is the one black-box harness of presenced's tests: it
// starts a real node (server.New and Start) on free loopback ports, stops
// it when the test ends, and talks to it as a client would: HTTP requests
// and their JSON answers, UDP datagrams, /metrics samples and an event
// stream that records what it reads.
//
// The server's external tests (package server_test, including the cluster
// tests), the client's tests and anything else that needs a running node
// use it. What a black-box test cannot reach (a crash of the Redis writer,
// a bulk load of the table) the server package exposes to its own external
// tests in export_test.go, never here: this package uses only the server's
// public API, so it compiles for every importer.
//
// Polling lives in internal/testkit, which imports nothing of presenced so
// that persist's tests can use it too.
package servertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

// Config is the test default: HTTP and UDP on free loopback ports, in
// memory (no data dir), two UDP loops, warnings only, and no per-session
// min gap (tests resend faster than 1 s; those that check the limit set
// it).
func Config() server.Config {
	cfg := server.DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.UDPLoops = 2
	cfg.LogLevel = "warn"
	cfg.HeartbeatMinGap = 0
	return cfg
}

// Node is one running server of a test.
type Node struct {
	T    testing.TB
	Srv  *server.Server
	Cfg  server.Config // as started
	Base string        // http://host:port
	UDP  string        // host:port; "" when UDP is off
	Keys *token.Keyring
	// HTTP has a 5 s timeout; streams use a client without one.
	HTTP *http.Client
	sse  *http.Client
}

// Start runs a node with Config changed by mod (nil: unchanged).
func Start(t testing.TB, mod func(*server.Config)) *Node {
	t.Helper()
	cfg := Config()
	if mod != nil {
		mod(&cfg)
	}
	return StartConfig(t, cfg)
}

// StartConfig runs a node with cfg and shuts it down when t ends (an
// error then fails t).
func StartConfig(t testing.TB, cfg server.Config) *Node {
	t.Helper()
	srv, err := Run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{T: t, Srv: srv, Cfg: cfg, Base: "http://" + srv.HTTPAddr(), UDP: srv.UDPAddr(),
		HTTP: &http.Client{Timeout: 5 * time.Second}, sse: &http.Client{}}
	t.Cleanup(func() {
		if err := n.Shutdown(); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		// Leave no client goroutine behind: some tests count allocations.
		n.HTTP.CloseIdleConnections()
		n.sse.CloseIdleConnections()
	})
	if cfg.SecretFile != "" {
		if n.Keys, err = token.LoadKeyring(cfg.SecretFile); err != nil {
			t.Fatalf("cannot load the keyring: %v", err)
		}
	}
	return n
}

// Run creates and starts a server with cfg, for callers without a
// testing.TB (examples); the caller shuts it down. PRESENCED_TEST_LOG=1
// sends its log to stderr at info level; otherwise it is discarded.
func Run(cfg server.Config) (*server.Server, error) {
	var w io.Writer = io.Discard
	if os.Getenv("PRESENCED_TEST_LOG") != "" {
		w, cfg.LogLevel = os.Stderr, "info"
	}
	srv, err := server.New(cfg, server.NewLogger(w, cfg, nil))
	if err != nil {
		return nil, fmt.Errorf("cannot create server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("cannot start server: %w", err)
	}
	return srv, nil
}

// Shutdown stops the node within 10 s; later calls (the cleanup's) do nothing.
func (n *Node) Shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.Srv.Shutdown(ctx)
}

// At is a client of whatever answers at base (a proxy in front of nodes):
// the HTTP helpers work, nothing is started or stopped.
func At(t testing.TB, base string) *Node {
	c := &http.Client{Timeout: 5 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return &Node{T: t, Base: base, HTTP: c, sse: &http.Client{}}
}

// Attach talks to srv, which the test started and stops itself (a server
// with a log buffer, or one started while clients already knock).
func Attach(t testing.TB, srv *server.Server) *Node {
	n := At(t, "http://"+srv.HTTPAddr())
	n.Srv, n.UDP = srv, srv.UDPAddr()
	return n
}

// WithSecret writes keyring (lines "kid secret") to a file of t and points
// the config at it; the node's Keys then mint tokens.
func WithSecret(t testing.TB, keyring string) func(*server.Config) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(keyring), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *server.Config) { c.SecretFile = path }
}

// Do sends one request and decodes a JSON answer into out (when non-nil);
// it returns the status.
func (n *Node) Do(method, path, body string, out any) int {
	n.T.Helper()
	req, err := http.NewRequest(method, n.Base+path, strings.NewReader(body))
	if err != nil {
		n.T.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := n.HTTP.Do(req)
	if err != nil {
		n.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			n.T.Fatalf("%s %s: status %d, cannot decode %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// PostHeartbeat is POST /v1/heartbeat; it returns the status.
func (n *Node) PostHeartbeat(user, room, tok string) int {
	n.T.Helper()
	b, _ := json.Marshal(map[string]string{"user": user, "room": room, "token": tok})
	return n.Do("POST", "/v1/heartbeat", string(b), nil)
}

// Heartbeat is POST /v1/heartbeat without a token; anything but 200 fails t.
func (n *Node) Heartbeat(user, room string) {
	n.T.Helper()
	if c := n.PostHeartbeat(user, room, ""); c != 200 {
		n.T.Fatalf("heartbeat %s/%s: status %d", user, room, c)
	}
}

// User is the answer of GET /v1/users/{user}.
type User struct {
	User     string   `json:"user"`
	Online   bool     `json:"online"`
	Rooms    []string `json:"rooms"`
	LastSeen *string  `json:"last_seen"`
	Partial  bool     `json:"partial"`
}

// User is GET /v1/users/{u}; anything but 200 fails t.
func (n *Node) User(u string) User {
	n.T.Helper()
	var us User
	if code := n.Do("GET", "/v1/users/"+url.PathEscape(u), "", &us); code != 200 {
		n.T.Fatalf("GET user %q: %d", u, code)
	}
	return us
}

// RoomOnline is GET /v1/rooms/{r}: the online count and whether the answer
// is partial; anything but 200 fails t.
func (n *Node) RoomOnline(r string) (online int, partial bool) {
	n.T.Helper()
	var out struct {
		Online  int  `json:"online"`
		Partial bool `json:"partial"`
	}
	if code := n.Do("GET", "/v1/rooms/"+url.PathEscape(r), "", &out); code != 200 {
		n.T.Fatalf("GET room %q: %d", r, code)
	}
	return out.Online, out.Partial
}

// Stats is the answer of GET /v1/stats.
type Stats struct {
	OnlineUsers int  `json:"online_users"`
	Sessions    int  `json:"sessions"`
	Rooms       int  `json:"rooms"`
	Partial     bool `json:"partial"`
}

// Stats is GET /v1/stats; anything but 200 fails t.
func (n *Node) Stats() Stats {
	n.T.Helper()
	var s Stats
	if code := n.Do("GET", "/v1/stats", "", &s); code != 200 {
		n.T.Fatalf("GET stats: %d", code)
	}
	return s
}

// Metric returns the value of one sample of GET /metrics, written as it
// appears there (name{labels}); a sample that is not there fails t.
func (n *Node) Metric(sample string) float64 {
	n.T.Helper()
	resp, err := n.HTTP.Get(n.Base + "/metrics")
	if err != nil {
		n.T.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				n.T.Fatalf("metric %s: cannot parse %q: %v", sample, v, err)
			}
			return f
		}
	}
	n.T.Fatalf("metric %s not found", sample)
	return 0
}

// UDPClient sends datagrams to a node from one socket and reads replies.
type UDPClient struct {
	t testing.TB
	c *net.UDPConn
}

// UDPClient opens a socket to the node's UDP port, closed when t ends.
func (n *Node) UDPClient() *UDPClient {
	n.T.Helper()
	raddr, err := net.ResolveUDPAddr("udp", n.UDP)
	if err != nil {
		n.T.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		n.T.Fatal(err)
	}
	n.T.Cleanup(func() { c.Close() })
	return &UDPClient{t: n.T, c: c}
}

// Send writes b and returns the reply, or nil when none comes within wait
// (wait 0: do not read).
func (u *UDPClient) Send(b []byte, wait time.Duration) []byte {
	u.t.Helper()
	if _, err := u.c.Write(b); err != nil {
		u.t.Fatal(err)
	}
	if wait == 0 {
		return nil
	}
	buf := make([]byte, 2048)
	_ = u.c.SetReadDeadline(time.Now().Add(wait))
	n, err := u.c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// Request encodes a v1 request datagram.
func (u *UDPClient) Request(seq uint32, ack bool, items ...wire.Item) []byte {
	u.t.Helper()
	b, err := wire.AppendRequest(nil, seq, ack, items)
	if err != nil {
		u.t.Fatal(err)
	}
	return b
}

// Event is one event of GET /v1/events.
type Event struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	User   string          `json:"user"`
	Room   string          `json:"room"`
	Reason string          `json:"reason"`
	At     string          `json:"at"`
	State  json.RawMessage `json:"state"`
}

// kind is the event's type, with ":<reason>" after a leave.
func (e Event) kind() string {
	if e.Type == "leave" {
		return e.Type + ":" + e.Reason
	}
	return e.Type
}

// Events records the events of one GET /v1/events stream.
type Events struct {
	mu  sync.Mutex
	evs []Event
}

// Events opens an event stream from now on, closed when t ends.
func (n *Node) Events() *Events { return n.EventsFrom("") }

// EventsFrom opens an event stream resuming after lastID ("": from now),
// closed when t ends. It returns once the stream has begun.
func (n *Node) EventsFrom(lastID string) *Events {
	n.T.Helper()
	l := &Events{}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.Base+"/v1/events", nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := n.sse.Do(req)
	if err != nil {
		cancel()
		n.T.Fatalf("GET /v1/events: %v", err)
	}
	done := make(chan struct{})
	n.T.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	ready := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		typ := ""
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first {
				close(ready)
				first = false
			}
			switch {
			case strings.HasPrefix(line, "event: "):
				typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev := Event{Type: typ}
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev)
				l.mu.Lock()
				l.evs = append(l.evs, ev)
				l.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		n.T.Fatal("event stream did not start")
	}
	return l
}

// Count reports how many events of typ ("join", "update", "occupied",
// "leave:<reason>") concern user and room.
func (l *Events) Count(typ, user, room string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := 0
	for _, e := range l.evs {
		if e.kind() == typ && e.User == user && e.Room == room {
			c++
		}
	}
	return c
}

// CountAll reports how many events of typ were read, whoever they concern.
func (l *Events) CountAll(typ string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := 0
	for _, e := range l.evs {
		if e.kind() == typ {
			c++
		}
	}
	return c
}

// Snapshot returns a copy of the events read so far.
func (l *Events) Snapshot() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.evs...)
}

// Members returns the member events (join, leave, update) read so far.
func (l *Events) Members() []Event {
	var out []Event
	for _, ev := range l.Snapshot() {
		if ev.Type != "occupied" && ev.Type != "vacated" {
			out = append(out, ev)
		}
	}
	return out
}
