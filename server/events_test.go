package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
)

// streamEvent is one server-sent event as a client sees it.
type streamEvent struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	User   string          `json:"user"`
	Room   string          `json:"room"`
	At     string          `json:"at"`
	Reason string          `json:"reason"`
	State  json.RawMessage `json:"state"`
	Online int             `json:"online"`
	Joined int             `json:"joined"`
	Left   int             `json:"left"`
	Conn   string          `json:"conn"`
	Conns  []struct {
		Conn  string          `json:"conn"`
		State json.RawMessage `json:"state"`
	} `json:"connections"`
	sseID string // the id: line
	name  string // the event: line
}

func (e streamEvent) key() string { return e.Type + " " + e.User + " " + e.Room + " " + e.Reason }

// stream is an open GET /v1/events read by a goroutine into a channel.
type stream struct {
	resp   *http.Response
	cancel context.CancelFunc
	evs    chan streamEvent
	done   chan struct{}
	mu     sync.Mutex
	err    error
	pings  int
	// roomEvents: next returns occupied and vacated too (by default it
	// skips them, so tests of member events read only those).
	roomEvents bool
}

var sseClient = &http.Client{} // no timeout: streams last

// openStream opens an event stream with optional query and Last-Event-ID
// and closes it when the test ends.
func openStream(t *testing.T, base, query, lastID string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/events"+query, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}
	if resp.StatusCode != 200 {
		cancel()
		t.Fatalf("GET /v1/events%s: status %d", query, resp.StatusCode)
	}
	s := &stream{resp: resp, cancel: cancel, evs: make(chan streamEvent, 1<<16), done: make(chan struct{})}
	go s.read()
	t.Cleanup(s.close)
	return s
}

func (s *stream) read() {
	defer close(s.done)
	sc := bufio.NewScanner(s.resp.Body)
	var id, name string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			s.mu.Lock()
			s.pings++
			s.mu.Unlock()
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			var ev streamEvent
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
				s.mu.Lock()
				s.err = fmt.Errorf("bad data line %q: %v", line, err)
				s.mu.Unlock()
				return
			}
			ev.sseID, ev.name = id, name
			s.evs <- ev
		}
	}
	s.mu.Lock()
	if s.err == nil {
		s.err = fmt.Errorf("stream ended: %v", sc.Err())
	}
	s.mu.Unlock()
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
	<-s.done
}

// next returns the next event or fails the test after d.
func (s *stream) next(t *testing.T, d time.Duration) streamEvent {
	t.Helper()
	select {
	case ev := <-s.evs:
		if ev.ID != ev.sseID || ev.Type != ev.name {
			t.Fatalf("event %+v: id/type lines do not match the data", ev)
		}
		if !s.roomEvents && (ev.Type == "occupied" || ev.Type == "vacated") {
			return s.next(t, d)
		}
		return ev
	case <-s.done:
		select {
		case ev := <-s.evs:
			return ev
		default:
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Fatalf("stream ended before the next event: %v", s.err)
	case <-time.After(d):
		t.Fatalf("no event within %s", d)
	}
	return streamEvent{}
}

func noDebounce(c *server.Config) { c.LeaveDelay = 0 }

// A stream outlives the HTTP write timeout many times over and carries
// every event, including one long after the timeout.
func TestEventStreamOutlivesWriteTimeout(t *testing.T) {
	const wt = 300 * time.Millisecond
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.HTTPWriteTimeout = wt })
	s := openStream(t, n.Base, "?room=r", "")
	for i := range 6 { // spread over 5x the write timeout
		n.PostHeartbeat(fmt.Sprintf("u%d", i), "r", "")
		if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.User != fmt.Sprintf("u%d", i) {
			t.Fatalf("event %d = %+v", i, ev)
		}
		time.Sleep(wt / 4 * 5 / 2) // a real clock: the stream must outlive its write timeout
	}
	time.Sleep(2 * wt) // idle past the timeout, then one more
	n.PostHeartbeat("late", "r", "")
	if ev := s.next(t, 5*time.Second); ev.User != "late" {
		t.Fatalf("late event = %+v", ev)
	}
}

// Random disconnects and reconnects with the last id: the union of what the
// client saw is every event once, in order.
func TestEventStreamResumeProperty(t *testing.T) {
	n := startNode(t, noDebounce)
	const total = 600
	rng := rand.New(rand.NewSource(1))
	s := openStream(t, n.Base, "", "") // subscribed before the first event
	go func() {
		for i := range total {
			n.Do("POST", "/v1/heartbeat", fmt.Sprintf(`{"user":"u%d","room":"r%d"}`, i, i%3), nil)
		}
	}()
	var got []streamEvent
	last := ""
	for len(got) < total {
		if s == nil {
			s = openStream(t, n.Base, "", last)
		}
		take := 1 + rng.Intn(120)
		for range take {
			if len(got) == total {
				break
			}
			ev := s.next(t, 10*time.Second)
			if ev.Type == "reset" {
				t.Fatalf("reset after %d events although the history holds them", len(got))
			}
			got = append(got, ev)
			last = ev.ID
		}
		s.close()
		s = nil
	}
	seen := map[string]bool{}
	for i, ev := range got {
		if seen[ev.User] {
			t.Fatalf("event %d (%s) delivered twice", i, ev.User)
		}
		seen[ev.User] = true
		if want := fmt.Sprintf("u%d", i); ev.User != want {
			t.Fatalf("event %d is %s, want %s: out of order or missing", i, ev.User, want)
		}
	}
	// ?since= resumes like the header does.
	s = openStream(t, n.Base, "?since="+got[total-2].ID, "")
	if ev := s.next(t, 5*time.Second); ev.User != got[total-1].User {
		t.Fatalf("?since resumed at %+v, want %s", ev, got[total-1].User)
	}
}

// A client whose last id has left the history gets a reset, then live events.
func TestEventStreamHistoryOverflowResets(t *testing.T) {
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.EventHistory = 10 })
	s := openStream(t, n.Base, "", "")
	n.PostHeartbeat("first", "r", "")
	first := s.next(t, 5*time.Second)
	s.close()
	for i := range 20 {
		n.PostHeartbeat(fmt.Sprintf("u%d", i), "r", "")
	}
	s = openStream(t, n.Base, "", first.ID)
	ev := s.next(t, 5*time.Second)
	if ev.Type != "reset" || ev.Reason != "history_lost" || ev.ID == "" {
		t.Fatalf("first event after an overflowed history = %+v, want reset history_lost", ev)
	}
	n.PostHeartbeat("after", "r", "")
	if ev = s.next(t, 5*time.Second); ev.User != "after" {
		t.Fatalf("after reset got %+v, want the live join of after", ev)
	}
	// Within the history: no reset.
	s2 := openStream(t, n.Base, "", ev.ID)
	n.PostHeartbeat("after2", "r", "")
	if ev := s2.next(t, 5*time.Second); ev.User != "after2" {
		t.Fatalf("resume within history got %+v", ev)
	}
	if v := n.Metric("presenced_event_resets_total"); v < 1 {
		t.Fatalf("presenced_event_resets_total = %v", v)
	}
}

// A restarted node has a new history: an id from the old one gets a reset.
func TestEventStreamRestartResets(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *server.Config) { noDebounce(c); c.DataDir = dir }
	n := startNode(t, cfg)
	s := openStream(t, n.Base, "", "")
	n.PostHeartbeat("a", "r", "")
	old := s.next(t, 5*time.Second)
	s.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // a new epoch (ms)
	n2 := startNode(t, cfg)
	s2 := openStream(t, n2.Base, "", old.ID)
	if ev := s2.next(t, 5*time.Second); ev.Type != "reset" {
		t.Fatalf("old id after restart: %+v, want reset", ev)
	}
	if n2.User("a").Online != true {
		t.Fatal("session lost across restart")
	}
}

// A leave followed within --leave-delay by a join of the same session
// produces nothing; a leave alone arrives the delay late; queries are not
// delayed.
func TestEventStreamDebounce(t *testing.T) {
	const delay = 400 * time.Millisecond
	n := startNode(t, func(c *server.Config) { c.LeaveDelay = delay })
	s := openStream(t, n.Base, "?room=r", "")
	n.PostHeartbeat("a", "r", "")
	if ev := s.next(t, 5*time.Second); ev.Type != "join" {
		t.Fatalf("got %+v", ev)
	}
	// A reload: leave and rejoin within the delay.
	n.Do("POST", "/v1/leave", `{"user":"a","room":"r"}`, nil)
	if n.User("a").Online {
		t.Fatal("query delayed: user still online right after leave")
	}
	n.PostHeartbeat("a", "r", "")
	// A real leave, then a marker join: the leave comes delay late, after
	// the marker; nothing of the reload appears.
	t0 := time.Now()
	n.Do("POST", "/v1/leave", `{"user":"a","room":"r"}`, nil)
	n.PostHeartbeat("marker", "r", "")
	if ev := s.next(t, 5*time.Second); ev.key() != "join marker r " {
		t.Fatalf("got %+v, want join of marker (the reload must produce nothing)", ev)
	}
	ev := s.next(t, 5*time.Second)
	if ev.key() != "leave a r left" {
		t.Fatalf("got %+v, want the held leave of a", ev)
	}
	if d := time.Since(t0); d < delay {
		t.Fatalf("leave arrived after %s, before the %s delay", d, delay)
	}
}

// The first member's join is preceded by occupied, the last member's leave
// followed by vacated; a reload of the only member produces neither.
func TestEventStreamOccupiedVacated(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.LeaveDelay = 300 * time.Millisecond })
	s := openStream(t, n.Base, "?room=r", "")
	s.roomEvents = true
	n.PostHeartbeat("a", "r", "")
	n.PostHeartbeat("b", "r", "")
	for _, want := range []string{"occupied  r ", "join a r ", "join b r "} {
		if ev := s.next(t, 5*time.Second); ev.key() != want {
			t.Fatalf("got %q, want %q", ev.key(), want)
		}
	}
	n.Do("POST", "/v1/leave", `{"user":"a","room":"r"}`, nil)
	n.Do("POST", "/v1/leave", `{"user":"b","room":"r"}`, nil)
	n.PostHeartbeat("b", "r", "") // a reload of the last member: no vacated, no occupied
	for _, want := range []string{"leave a r left"} {
		if ev := s.next(t, 5*time.Second); ev.key() != want {
			t.Fatalf("got %q, want %q", ev.key(), want)
		}
	}
	n.Do("POST", "/v1/leave", `{"user":"b","room":"r"}`, nil)
	for _, want := range []string{"leave b r left", "vacated  r "} {
		if ev := s.next(t, 5*time.Second); ev.key() != want {
			t.Fatalf("got %q, want %q", ev.key(), want)
		}
	}
}

// A room above --room-events-max sends occupancy events (online, joined,
// left per interval) instead of per-member events, and per-member events
// again once it shrinks below 90% of the limit.
func TestEventStreamBigRoomOccupancy(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		noDebounce(c)
		c.RoomEventsMax = 3
		c.OccupancyInterval = 200 * time.Millisecond
	})
	s := openStream(t, n.Base, "?room=big", "")
	for i := range 6 {
		n.PostHeartbeat(fmt.Sprintf("u%d", i), "big", "")
	}
	for i := range 3 { // up to the limit: per-member events
		if ev := s.next(t, 5*time.Second); ev.Type != "join" || ev.User != fmt.Sprintf("u%d", i) {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	s.roomEvents = true
	joined := 0
	for joined < 3 { // the three joins past the limit, counted in occupancy events
		ev := s.next(t, 5*time.Second)
		switch {
		case ev.Type == "occupied":
		case ev.Type == "occupancy" && ev.Online > 3 && ev.Online <= 6 && ev.Left == 0:
			joined += ev.Joined
		default:
			t.Fatalf("after the limit: %+v, want occupancy only", ev)
		}
	}
	if joined != 3 {
		t.Fatalf("occupancy events counted %d joins, want 3", joined)
	}
	for i := range 4 { // down to 2 members: below 90% of 3
		n.Do("POST", "/v1/leave", fmt.Sprintf(`{"user":"u%d","room":"big"}`, i), nil)
	}
	// After the next occupancy tick the room is small again.
	for {
		ev := s.next(t, 5*time.Second)
		if ev.Type == "occupancy" {
			break
		}
		t.Fatalf("while big: %+v", ev)
	}
	n.Do("POST", "/v1/leave", `{"user":"u4","room":"big"}`, nil)
	for {
		ev := s.next(t, 5*time.Second)
		if ev.Type == "occupancy" {
			continue // a tick may fall between the leaves
		}
		if ev.Type != "leave" || ev.User != "u4" {
			t.Fatalf("small again: %+v, want u4's leave", ev)
		}
		break
	}
}

// --event-history-bytes bounds the history's memory: events with big
// states evict the oldest ones (a resume from them gets a reset) although
// --event-history would hold them all.
func TestEventHistoryBytesBound(t *testing.T) {
	const bound = 1 << 20
	n := startNode(t, func(c *server.Config) { noDebounce(c); c.EventHistoryBytes = bound })
	s := openStream(t, n.Base, "", "")
	n.PostHeartbeat("first", "r", "")
	first := s.next(t, 5*time.Second)
	s.close()
	state := `{"s":"` + strings.Repeat("x", 1000) + `"}`
	for b := range 2 {
		var items []string
		for i := range 1000 {
			items = append(items, fmt.Sprintf(`{"user":"u%d-%d","room":"r","state":%s}`, b, i, state))
		}
		var out struct{ Accepted int }
		n.Do("POST", "/v1/heartbeats", `{"heartbeats":[`+strings.Join(items, ",")+`]}`, &out)
		if out.Accepted != 1000 {
			t.Fatalf("batch %d: %d accepted", b, out.Accepted)
		}
	}
	if v := n.Metric("presenced_event_history_bytes"); v > bound || v < bound/2 {
		t.Fatalf("history bytes %v, want at most and near %d", v, bound)
	}
	if v := n.Metric("presenced_event_history_events"); v >= 2001 {
		t.Fatalf("history holds %v events: the byte bound did not apply", v)
	}
	s = openStream(t, n.Base, "", first.ID)
	if ev := s.next(t, 5*time.Second); ev.Type != "reset" {
		t.Fatalf("resume from an evicted id: %+v, want reset", ev)
	}
}
