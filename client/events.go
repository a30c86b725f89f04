package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Event is one event of GET /v1/events (README "Events", /openapi.json).
type Event struct {
	// ID is the event's id: the SSE id line, or the "id" of the data.
	// Empty from a server that does not number its events.
	ID string
	// Type is join, leave, update or reset (or a room event: occupied,
	// vacated, occupancy).
	Type string
	// User and Room name the session (empty on reset).
	User, Room string
	// At is when the server decided the event (zero on reset).
	At time.Time
	// Reason is why a session left (left, timeout, disconnect) or why the
	// stream was reset (history_lost); empty otherwise.
	Reason string
	// State is the session state on join and update (nil when none).
	State json.RawMessage
	// Conn is, on an update, the connection that started, ended or changed
	// state while the member stayed (empty otherwise; "" also names the
	// session's default connection).
	Conn string
	// Connections are, on an update that names Conn, the member's
	// connections after the change (nil when the event carries none).
	Connections []Connection
	// Data is the event's whole JSON data, for fields this struct does not
	// name (e.g. occupancy's online, joined and left).
	Data json.RawMessage
}

// Connection is one connection (a browser tab, a device, a Heartbeater) of
// a session, as events, room members and user-status sessions list them.
// Its JSON form is theirs: {"conn","state","last_seen"}.
type Connection struct {
	// Conn is the connection id; "" is the session's default connection
	// (heartbeats that name none).
	Conn string `json:"conn"`
	// State is the connection's state (nil when none).
	State json.RawMessage `json:"state,omitempty"`
	// LastSeen is the connection's last heartbeat; zero in events, which
	// do not carry it.
	LastSeen time.Time `json:"last_seen"`
}

// SubscriberConfig configures a Subscription. Zero fields take the default
// their comment names.
type SubscriberConfig struct {
	// BaseURL is the server's HTTP API, e.g. http://127.0.0.1:7070.
	BaseURL string
	// Room limits the stream to one room; empty: all rooms.
	Room string
	// BearerToken is sent as "Authorization: Bearer" when the server runs
	// with --api-token-file; empty: none.
	BearerToken string
	// LastEventID resumes after this event id (e.g. one saved by an earlier
	// run); empty: live events only.
	LastEventID string
	// HTTPClient opens the stream (default: a client without a timeout; the
	// stream is guarded by IdleTimeout instead). Its Timeout must be zero.
	HTTPClient *http.Client
	// MinBackoff is the wait before reconnecting after a drop (default
	// 500ms, or the server's "retry:" value); it doubles, with ±20% jitter,
	// for each connection that fails before delivering an event, up to
	// MaxBackoff (default 30s).
	MinBackoff, MaxBackoff time.Duration
	// IdleTimeout drops and reopens a stream that stays silent this long
	// (default 45s; the server sends a comment every 10 s).
	IdleTimeout time.Duration
	// OnError, when set, is called with each dropped or failed connection
	// (which the Subscription retries by itself), on the goroutine calling
	// Next: it must not block.
	OnError func(error)
}

// Subscription reads an event stream, reconnecting with backoff when the
// connection drops and resuming after the last event id it saw (the
// Last-Event-ID header). Next must be called from one goroutine at a time;
// Close may be called from any. A Subscription starts no goroutine.
type Subscription struct {
	cfg    SubscriberConfig
	ctx    context.Context
	cancel context.CancelFunc

	// Owned by the goroutine calling Next.
	body      io.ReadCloser
	rd        *bufio.Reader
	idle      *time.Timer
	drop      context.CancelFunc // ends the current connection
	opened    bool               // a connection was tried: later ones wait a backoff
	delivered bool               // the current connection yielded an event
	fails     int                // connections in a row without an event
	retry     time.Duration      // the server's retry: value

	mu struct {
		sync.Mutex
		lastID string
	}
}

// Subscribe opens cfg's stream and returns a Subscription reading it; it
// ends when ctx is done or at Close. When Subscribe returns, the server has
// registered the stream: events decided from then on reach Next. It returns
// an error (ErrUnauthorized for a refused bearer token) when the server
// refuses the stream; a network error or a 5xx answer is passed to
// OnError, and Next keeps trying.
func Subscribe(ctx context.Context, cfg SubscriberConfig) (*Subscription, error) {
	if cfg.BaseURL == "" {
		return nil, errors.New("cannot subscribe: BaseURL must be set")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 45 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	s := &Subscription{cfg: cfg}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.mu.lastID = cfg.LastEventID
	if err := s.connect(); err != nil {
		var perm *permanentError
		if errors.As(err, &perm) {
			s.cancel()
			return nil, perm.err
		}
		if s.ctx.Err() != nil {
			s.cancel()
			return nil, err
		}
		s.report(err)
	}
	return s, nil
}

// LastEventID returns the id of the last event Next returned (or
// SubscriberConfig.LastEventID before the first): save it to resume a later
// Subscription.
func (s *Subscription) LastEventID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.lastID
}

// Close ends the stream; a blocked Next returns ErrClosed.
func (s *Subscription) Close() error {
	s.cancel()
	return nil
}

// Next returns the next event, connecting and reconnecting as needed. A
// reset event (Type "reset") means events were lost: re-read state with the
// query endpoints. Next returns ErrClosed after Close or when the context
// given to Subscribe is done, and ErrUnauthorized (or another error for a
// 4xx answer) when the server refuses the stream; calling it again retries.
func (s *Subscription) Next() (Event, error) {
	for {
		if s.ctx.Err() != nil {
			s.disconnect()
			return Event{}, ErrClosed
		}
		if s.body == nil {
			if err := s.connect(); err != nil {
				if s.ctx.Err() != nil {
					return Event{}, ErrClosed
				}
				var perm *permanentError
				if errors.As(err, &perm) {
					return Event{}, perm.err
				}
				s.report(err)
				continue
			}
		}
		ev, err := s.readEvent()
		if err == nil {
			s.delivered = true
			s.fails = 0
			return ev, nil
		}
		s.disconnect()
		if s.ctx.Err() != nil {
			return Event{}, ErrClosed
		}
		s.report(fmt.Errorf("cannot read event stream: %w", err))
	}
}

// permanentError is a refusal that retrying with the same request cannot
// cure; Next returns it to the caller.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }

// connect waits the backoff due and opens the stream.
func (s *Subscription) connect() error {
	if s.opened {
		base := max(s.cfg.MinBackoff, s.retry)
		d := jitter(min(base<<min(s.fails, 16), s.cfg.MaxBackoff), 0.8, 1.2)
		t := time.NewTimer(d)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return s.ctx.Err()
		case <-t.C:
		}
	}
	s.opened = true
	s.fails++ // until an event arrives
	u := s.cfg.BaseURL + "/v1/events"
	if s.cfg.Room != "" {
		u += "?room=" + url.QueryEscape(s.cfg.Room)
	}
	ctx, drop := context.WithCancel(s.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		drop()
		return &permanentError{fmt.Errorf("cannot subscribe: %w", err)}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if s.cfg.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+s.cfg.BearerToken)
	}
	if id := s.LastEventID(); id != "" {
		req.Header.Set("Last-Event-ID", id)
	}
	idle := time.AfterFunc(s.cfg.IdleTimeout, drop)
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		idle.Stop()
		drop()
		return fmt.Errorf("cannot subscribe to %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		idle.Stop()
		drop()
		var ans struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(msg, &ans) == nil && ans.Error != "" {
			msg = []byte(ans.Error)
		}
		err := fmt.Errorf("cannot subscribe to %s: %d %s", u, resp.StatusCode, strings.TrimSpace(string(msg)))
		switch {
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return &permanentError{fmt.Errorf("%w: %w", ErrUnauthorized, err)}
		case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests:
			return &permanentError{err}
		}
		return err
	}
	s.body, s.idle, s.drop, s.delivered = resp.Body, idle, drop, false
	if s.rd == nil {
		s.rd = bufio.NewReaderSize(resp.Body, 16<<10)
	} else {
		s.rd.Reset(resp.Body)
	}
	return nil
}

// disconnect closes the current connection, if any.
func (s *Subscription) disconnect() {
	if s.body == nil {
		return
	}
	s.idle.Stop()
	s.drop()
	s.body.Close()
	s.body = nil
	if s.delivered {
		s.fails = 0
	}
}

func (s *Subscription) report(err error) {
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

// maxEventBytes bounds the data of one event, so a broken stream cannot
// grow memory without end.
const maxEventBytes = 1 << 20

// readEvent reads lines until an event is complete (the text/event-stream
// format of the HTML standard: field lines, comments starting with ':', a
// blank line dispatching).
func (s *Subscription) readEvent() (Event, error) {
	var typ, id string
	var data strings.Builder
	hasID, hasData := false, false
	for {
		line, err := s.rd.ReadString('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		s.idle.Reset(s.cfg.IdleTimeout)
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if !hasData {
				typ = "" // nothing to dispatch; an id alone still counts
				if hasID {
					s.setLastID(id)
				}
				hasID = false
				continue
			}
			ev, ok := s.decode(typ, id, hasID, data.String())
			if ok {
				return ev, nil
			}
			typ, hasID, hasData = "", false, false
			data.Reset()
			continue
		}
		if line[0] == ':' {
			continue // comment: keeps the stream alive
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			typ = value
		case "data":
			if data.Len()+len(value) > maxEventBytes {
				return Event{}, fmt.Errorf("event data exceeds %d bytes", maxEventBytes)
			}
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				id, hasID = value, true
			}
		case "retry":
			if ms, err := strconv.ParseUint(value, 10, 31); err == nil {
				s.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// decode builds an Event from one dispatched block; ok is false (and the
// problem reported) when the data is not a JSON object.
func (s *Subscription) decode(typ, id string, hasID bool, data string) (Event, bool) {
	var d struct {
		ID          string          `json:"id"`
		Type        string          `json:"type"`
		User        string          `json:"user"`
		Room        string          `json:"room"`
		At          *time.Time      `json:"at"`
		Reason      *string         `json:"reason"`
		State       json.RawMessage `json:"state"`
		Conn        string          `json:"conn"`
		Connections []Connection    `json:"connections"`
	}
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		s.report(fmt.Errorf("cannot decode event data %.100q: %w", data, err))
		if hasID {
			s.setLastID(id)
		}
		return Event{}, false
	}
	ev := Event{ID: id, Type: typ, User: d.User, Room: d.Room, Data: json.RawMessage(data)}
	if !hasID {
		ev.ID = d.ID
	}
	if ev.Type == "" {
		ev.Type = d.Type
	}
	if ev.Type == "" {
		ev.Type = "message"
	}
	if d.At != nil {
		ev.At = *d.At
	}
	if d.Reason != nil {
		ev.Reason = *d.Reason
	}
	if len(d.State) > 0 && string(d.State) != "null" {
		ev.State = d.State
	}
	ev.Conn, ev.Connections = d.Conn, d.Connections
	for i := range ev.Connections {
		if string(ev.Connections[i].State) == "null" {
			ev.Connections[i].State = nil
		}
	}
	if ev.ID != "" {
		s.setLastID(ev.ID)
	}
	return ev, true
}

func (s *Subscription) setLastID(id string) {
	s.mu.Lock()
	s.mu.lastID = id
	s.mu.Unlock()
}
