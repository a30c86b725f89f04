package server_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
)

// streamStatus opens GET /v1/events through client and returns its status
// and, for a 200, a func that closes the stream.
func streamStatus(t *testing.T, client *http.Client, base string) (int, string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/events", nil)
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}
	if resp.StatusCode != 200 {
		var b [512]byte
		n, _ := resp.Body.Read(b[:])
		resp.Body.Close()
		cancel()
		return resp.StatusCode, string(b[:n]), nil
	}
	closeFn := func() { cancel(); resp.Body.Close() }
	t.Cleanup(closeFn)
	return 200, "", closeFn
}

// clientFrom is an HTTP client whose connections come from the loopback
// address local (127.0.0.x), one connection per request.
func clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// One address cannot hold every event stream (--max-event-streams-per-ip),
// and a stream the client closed gives its slot back at once, not at the
// next keep-alive write.
func TestEventStreamsPerIPAndPromptRelease(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.MaxEventStreams = 3; c.MaxEventStreamsPerIP = 2 })
	a, b := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	_, _, close1 := streamStatus(t, a, n.Base)
	streamStatus(t, a, n.Base)
	if code, body, _ := streamStatus(t, a, n.Base); code != 429 || !strings.Contains(body, "max-event-streams-per-ip") {
		t.Fatalf("third stream from one address: %d %q, want 429 naming max-event-streams-per-ip", code, body)
	}
	if code, _, _ := streamStatus(t, b, n.Base); code != 200 {
		t.Fatalf("a stream from another address: %d, want 200", code)
	}
	if v := n.Metric(`presenced_event_streams_refused_total{limit="max_event_streams_per_ip"}`); v != 1 {
		t.Fatalf("refused per ip = %v, want 1", v)
	}
	// Closed by the client: the slot is free well before the 10 s keep-alive.
	close1()
	testkit.Eventually(t, 3*time.Second, "the closed stream's slot", func() bool {
		return n.Metric("presenced_event_subscribers") == 2
	})
	if code, _, _ := streamStatus(t, a, n.Base); code != 200 {
		t.Fatalf("a stream after one closed: %d, want 200", code)
	}
}
