package server_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
)

// rawConn opens an idle TCP connection to the node's HTTP port from local
// (e.g. "127.0.0.2"), closed at the end of the test.
func rawConn(n *node, local string) net.Conn {
	n.T.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", strings.TrimPrefix(n.Base, "http://"))
	if err != nil {
		n.T.Fatal(err)
	}
	n.T.Cleanup(func() { c.Close() })
	return c
}

// get sends one GET on c and returns the status and body.
func get(t *testing.T, c net.Conn, path string) (int, []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// One client holding idle connections cannot lock others out: over
// --http-max-conns-per-ip it gets 429, over --http-max-conns everyone gets
// 503, and both come with a JSON error body.
func TestHTTPConnectionCaps(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.HTTPMaxConnsPerIP = 3; c.HTTPMaxConns = 5 })
	var idle, opened []net.Conn
	conn := func(local string) net.Conn {
		c := rawConn(n, local)
		opened = append(opened, c)
		return c
	}
	for range 3 {
		c := conn("127.0.0.1")
		if code, _ := get(t, c, "/livez"); code != 200 {
			t.Fatalf("connection within the cap: %d", code)
		}
		idle = append(idle, c)
	}
	jsonErr := func(body []byte, want string) {
		t.Helper()
		var e struct{ Error string }
		if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, want) {
			t.Fatalf("body %q: want a JSON error naming %s (%v)", body, want, err)
		}
	}
	code, body := get(t, conn("127.0.0.1"), "/livez")
	if code != 429 {
		t.Fatalf("4th connection from one address: %d %q, want 429", code, body)
	}
	jsonErr(body, "http-max-conns-per-ip")
	// Another client is still served.
	other := conn("127.0.0.2")
	if code, body := get(t, other, "/livez"); code != 200 {
		t.Fatalf("other client while the first is at its cap: %d %q", code, body)
	}
	// A slot freed is a slot usable again.
	idle[0].Close()
	testkit.Eventually(t, 5*time.Second, "the closed connection's slot to be usable again", func() bool {
		code, _ := get(t, conn("127.0.0.1"), "/livez")
		return code == 200
	})
	// 3 + 1 + 1 open now; the 6th anyone opens gets 503.
	conn("127.0.0.3")
	code, body = get(t, conn("127.0.0.4"), "/livez")
	if code != 503 {
		t.Fatalf("connection over http-max-conns: %d %q, want 503", code, body)
	}
	jsonErr(body, "http-max-conns")
	for _, c := range opened {
		c.Close()
	}
	testkit.Eventually(t, 5*time.Second, "the connections to close", func() bool {
		code, _ := get(t, conn("127.0.0.1"), "/livez")
		return code == 200
	})
	if v := n.Metric(`presenced_http_rejected_connections_total{reason="per_ip"}`); v < 1 {
		t.Fatalf("per_ip rejections = %v", v)
	}
}

// X-Forwarded-For and X-Real-IP name the client charged to --source-rate
// only when the peer is in --trusted-proxies.
func TestTrustedProxiesHTTP(t *testing.T) {
	hbFrom := func(n *node, local, xff, xri string) int {
		t.Helper()
		c := rawConn(n, local)
		body := `{"user":"u` + xff + xri + `"}`
		req := "POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n"
		if xff != "" {
			req += "X-Forwarded-For: " + xff + "\r\n"
		}
		if xri != "" {
			req += "X-Real-IP: " + xri + "\r\n"
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(c, req+"\r\n"+body)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	limit := func(c *server.Config) { c.SourceRate, c.SourceBurst = 1, 1 }
	// Behind a trusted proxy: one bucket per client it names.
	n := startNode(t, func(c *server.Config) { limit(c); c.TrustedProxies = "127.0.0.1, 10.9.0.0/16" })
	for i, tc := range []struct {
		xff, xri string
		want     int
	}{
		{"198.51.100.1", "", 200},
		{"198.51.100.2", "", 200},
		{"198.51.100.1", "", 429},              // same client again
		{"203.0.113.9, 198.51.100.3", "", 200}, // the rightmost is the client the proxy saw
		{"203.0.113.9, 198.51.100.3", "", 429}, // whatever the client put on the left
		{"198.51.100.4, 10.9.1.1", "", 200},    // an inner trusted proxy is skipped
		{"", "198.51.100.5", 200},              // X-Real-IP
		{"", "198.51.100.5", 429},
	} {
		if got := hbFrom(n, "127.0.0.1", tc.xff, tc.xri); got != tc.want {
			t.Fatalf("case %d (%q, %q): %d, want %d", i, tc.xff, tc.xri, got, tc.want)
		}
	}
	// From a peer that is not trusted, the headers are ignored.
	if got := hbFrom(n, "127.0.0.2", "198.51.100.10", ""); got != 200 {
		t.Fatalf("untrusted peer, first: %d", got)
	}
	if got := hbFrom(n, "127.0.0.2", "198.51.100.11", "198.51.100.12"); got != 429 {
		t.Fatalf("untrusted peer naming another client: %d, want 429 (headers ignored)", got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// A WebSocket counts against --max-ws-conns only: once upgraded it gives
// its --http-max-conns slot back, so sockets up to their own cap never
// make /readyz, /metrics or a new upgrade answer 503.
func TestWebSocketsLeaveHTTPConnSlots(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.HTTPMaxConns = 4; c.MaxWSConns = 20 })
	for range 8 {
		dialWS(t, n, "", nil)
	}
	for _, path := range []string{"/readyz", "/metrics"} {
		if c := n.Do("GET", path, "", nil); c != 200 {
			t.Fatalf("GET %s beside 8 sockets (http-max-conns 4): %d, want 200", path, c)
		}
	}
}
