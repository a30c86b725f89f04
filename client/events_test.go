package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/server"
)

// sseEvent renders event i of the fake stream: a join with id i.
func sseEvent(i int) string {
	return fmt.Sprintf("id: %d\nevent: join\ndata: {\"id\":\"%d\",\"type\":\"join\",\"user\":\"u%d\",\"room\":\"lobby\",\n"+
		"data: \"at\":\"2026-11-28T04:31:00.%03dZ\",\"reason\":null,\"state\":{\"n\":%d}}\n\n", i, i, i, i, i)
}

// fakeStream is an SSE server that resumes after Last-Event-ID. Its first
// connection sends events 1..4 and half of event 5, then drops the TCP
// connection; later ones send the rest, then a reset, and stay open.
type fakeStream struct {
	mu      sync.Mutex
	lastIDs []string // Last-Event-ID of each request ("" when absent)
	auth    []string // Authorization of each request
}

func (f *fakeStream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/events" || r.URL.Query().Get("room") != "lobby" {
		http.Error(w, `{"error":"unexpected request"}`, 400)
		return
	}
	f.mu.Lock()
	f.lastIDs = append(f.lastIDs, r.Header.Get("Last-Event-ID"))
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	n := len(f.lastIDs)
	f.mu.Unlock()
	after := 0
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		after, _ = strconv.Atoi(id)
	}
	if n == 1 {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
		buf.WriteString(": fake stream\nretry: 20\n\n")
		for i := after + 1; i <= 4; i++ {
			buf.WriteString(sseEvent(i))
		}
		buf.WriteString(sseEvent(5)[:25]) // cut inside event 5
		buf.Flush()
		return // closes the connection mid-event
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	for i := after + 1; i <= 10; i++ {
		fmt.Fprint(w, sseEvent(i))
		if i == 7 {
			fmt.Fprint(w, ": ping\r\n\r\n") // a comment, with CRLF line ends
		}
	}
	fmt.Fprint(w, "id: 11\nevent: reset\ndata: {\"id\":\"11\",\"type\":\"reset\",\"reason\":\"history_lost\"}\n\n")
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

func TestSubscriberResumesAfterDrop(t *testing.T) {
	f := &fakeStream{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var errs errorLog
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{
		BaseURL: srv.URL, Room: "lobby", BearerToken: "s3cret",
		MinBackoff: 10 * time.Millisecond, OnError: errs.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var got []client.Event
	for len(got) < 11 {
		ev, err := sub.Next()
		if err != nil {
			t.Fatalf("Next after %d events: %v", len(got), err)
		}
		got = append(got, ev)
	}
	for i, ev := range got[:10] {
		want := client.Event{
			ID: strconv.Itoa(i + 1), Type: "join", User: fmt.Sprintf("u%d", i+1), Room: "lobby",
			At: time.Date(2026, 11, 28, 4, 31, 0, (i+1)*int(time.Millisecond), time.UTC),
		}
		if ev.ID != want.ID || ev.Type != want.Type || ev.User != want.User || ev.Room != want.Room ||
			!ev.At.Equal(want.At) || ev.Reason != "" || string(ev.State) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Errorf("event %d = %+v, want %+v with state {\"n\":%d}", i, ev, want, i+1)
		}
	}
	if r := got[10]; r.Type != "reset" || r.Reason != "history_lost" || r.ID != "11" {
		t.Errorf("last event = %+v, want the reset (history_lost)", r)
	}
	if sub.LastEventID() != "11" {
		t.Errorf("LastEventID = %q, want 11", sub.LastEventID())
	}
	f.mu.Lock()
	lastIDs, auth := append([]string(nil), f.lastIDs...), append([]string(nil), f.auth...)
	f.mu.Unlock()
	if len(lastIDs) != 2 || lastIDs[0] != "" || lastIDs[1] != "4" {
		t.Errorf("Last-Event-ID per connection = %q, want none, then 4", lastIDs)
	}
	for _, a := range auth {
		if a != "Bearer s3cret" {
			t.Errorf("Authorization = %q, want the bearer token on every connection", a)
		}
	}
	errs.mu.Lock()
	if len(errs.errs) != 1 {
		t.Errorf("OnError got %v, want the one dropped connection", errs.errs)
	}
	errs.mu.Unlock()
	sub.Close()
	if _, err := sub.Next(); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
}

func TestSubscriberReconnectsSilentStream(t *testing.T) {
	var mu sync.Mutex
	var lastIDs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		first := len(lastIDs) == 1
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if first {
			fmt.Fprint(w, sseEvent(1)) // then silence, connection open
		} else {
			fmt.Fprint(w, sseEvent(2))
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{
		BaseURL: srv.URL, IdleTimeout: 300 * time.Millisecond, MinBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := 1; i <= 2; i++ {
		ev, err := sub.Next()
		if err != nil || ev.ID != strconv.Itoa(i) {
			t.Fatalf("event %d = %+v, %v", i, ev, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lastIDs) != 2 || lastIDs[1] != "1" {
		t.Errorf("Last-Event-ID per connection = %q, want none, then 1", lastIDs)
	}
}

func TestSubscriberRefusedToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(401)
			fmt.Fprint(w, `{"error":"bearer token required"}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, sseEvent(1))
	}))
	t.Cleanup(srv.Close)
	_, err := client.Subscribe(context.Background(), client.SubscriberConfig{BaseURL: srv.URL, BearerToken: "bad"})
	if !errors.Is(err, client.ErrUnauthorized) || !strings.Contains(err.Error(), "bearer token required") {
		t.Errorf("Subscribe with a bad token = %v, want ErrUnauthorized with the server's message", err)
	}
}

func TestSubscriberRealServerJoins(t *testing.T) {
	n := startNode(t, fastTiming)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{BaseURL: n.Base, Room: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i, u := range []string{"ivy", "jack"} {
		start(t, client.Config{UDPAddr: n.UDP, User: u, Room: "lobby"})
		ev, err := sub.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if i == 0 { // the first member occupies the room
			if ev.Type != "occupied" || ev.Room != "lobby" {
				t.Errorf("event = %+v, want lobby occupied", ev)
			}
			if ev, err = sub.Next(); err != nil {
				t.Fatalf("Next: %v", err)
			}
		}
		if ev.Type != "join" || ev.User != u || ev.Room != "lobby" || ev.At.IsZero() {
			t.Errorf("event = %+v, want %s joining lobby", ev, u)
		}
	}
}

func TestSubscriberRealServerBearer(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		path := t.TempDir() + "/api-tokens"
		if err := os.WriteFile(path, []byte("reader-token-0123456789\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.APITokenFile = path
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := client.Subscribe(ctx, client.SubscriberConfig{BaseURL: n.Base}); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("Subscribe without the bearer token = %v, want ErrUnauthorized", err)
	}
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{BaseURL: n.Base, BearerToken: "reader-token-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	start(t, client.Config{UDPAddr: n.UDP, User: "kim", Room: "den"})
	if ev, err := sub.Next(); err != nil || ev.Type != "occupied" {
		t.Errorf("event = %+v, %v; want den occupied", ev, err)
	}
	if ev, err := sub.Next(); err != nil || ev.Type != "join" || ev.User != "kim" || ev.Room != "den" {
		t.Errorf("event = %+v, %v; want kim joining den", ev, err)
	}
}
