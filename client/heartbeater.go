package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/presenced/presenced/server/wire"
)

// Transport names how a heartbeat travelled.
type Transport string

// The two transports.
const (
	TransportUDP  Transport = "udp"
	TransportHTTP Transport = "http"
)

// TokenFunc returns a new heartbeat token for the heartbeater's user (and
// room, for a room-bound token). reason says why: ErrTokenExpired,
// ErrBadToken, ErrUnknownKey or ErrWrongRoom. It runs on the heartbeater's
// goroutine (or in Leave) and should return within ctx.
type TokenFunc func(ctx context.Context, reason error) (string, error)

// Config configures a Heartbeater. Zero fields take the default their
// comment names.
type Config struct {
	// UDPAddr is the server's UDP heartbeat address (host:port, --udp-addr).
	// Empty: heartbeats go over HTTP only.
	UDPAddr string
	// BaseURL is the server's HTTP API (e.g. http://127.0.0.1:7070,
	// --http-addr). It carries heartbeats with a state, the fallback when UDP
	// stays silent, and is the only transport when UDPAddr is empty.
	// Empty: UDP only, no fallback.
	BaseURL string
	// User is the user id (1..128 bytes of UTF-8 without control characters).
	User string
	// Room is the room id; empty: the heartbeats only say the user is online,
	// and Leave leaves all the user's rooms.
	Room string
	// Conn is the connection id this heartbeater speaks for (1..64 bytes of
	// UTF-8 without control characters), sent with every heartbeat and
	// leave: the session (User, Room) stays live while any of its
	// connections does, and Leave ends this connection only. Default: 16
	// random base64url characters, so two heartbeaters of one user and room
	// (two devices, two processes) are two connections. Set it to keep the
	// id across restarts of the process.
	Conn string
	// Token is the first heartbeat token (empty for a server without
	// --secret-file).
	Token string
	// TokenFunc, when set, is asked for a new token when the server refuses
	// the current one, and before sending a token whose expiry has passed.
	TokenFunc TokenFunc
	// State is the session state, a JSON object (a map, a struct or a
	// json.RawMessage), sent with the first heartbeat over HTTP; nil sends
	// none and keeps what the server holds. See SetState.
	State any
	// Interval is how often to heartbeat until the server says (default
	// 60s, the server's default). Every reply carrying interval_ms replaces it.
	Interval time.Duration
	// AckTimeout is how long to wait for the ack of the first datagram of a
	// heartbeat (default 1s). Each resend doubles it, with ±20% jitter, up to
	// MaxAckTimeout.
	AckTimeout time.Duration
	// MaxAckTimeout caps the wait for one ack (default 8s).
	MaxAckTimeout time.Duration
	// FallbackAfter is the number of datagrams of one heartbeat left without
	// an ack after which the heartbeat goes over HTTP instead (default 3:
	// about 7 s with the default AckTimeout).
	FallbackAfter int
	// UDPRetryAfter is how long heartbeats stay on HTTP after a fallback
	// before UDP is tried again (default 5m).
	UDPRetryAfter time.Duration
	// HTTPClient sends the HTTP heartbeats (default: a client with a 10 s timeout).
	HTTPClient *http.Client
	// OnError, when set, is called with every failed heartbeat, leave or
	// token refresh, on the heartbeater's goroutine: it must not block.
	OnError func(error)
}

const (
	defaultInterval      = 60 * time.Second
	defaultTTL           = 150 * time.Second
	defaultAckTimeout    = time.Second
	defaultMaxAckTimeout = 8 * time.Second
	defaultFallbackAfter = 3
	defaultUDPRetryAfter = 5 * time.Minute
	// retryBase is the first wait after a failed heartbeat; it doubles per
	// failure up to the interval. A second is also the server's default
	// --heartbeat-min-gap.
	retryBase = time.Second
)

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	switch {
	case c.UDPAddr == "" && c.BaseURL == "":
		return errors.New("cannot start heartbeater: UDPAddr or BaseURL must be set")
	case !wire.ValidID([]byte(c.User), false):
		return errors.New("cannot start heartbeater: User must be 1 to 128 bytes of UTF-8 without control characters")
	case !wire.ValidID([]byte(c.Room), true):
		return errors.New("cannot start heartbeater: Room must be at most 128 bytes of UTF-8 without control characters")
	case len(c.Conn) > wire.MaxConnLen || !wire.ValidID([]byte(c.Conn), true):
		return fmt.Errorf("cannot start heartbeater: Conn must be at most %d bytes of UTF-8 without control characters", wire.MaxConnLen)
	case len(c.Token) > wire.MaxTokenLen:
		return fmt.Errorf("cannot start heartbeater: Token is longer than %d bytes", wire.MaxTokenLen)
	case c.Interval < 0 || c.AckTimeout < 0 || c.MaxAckTimeout < 0 || c.UDPRetryAfter < 0 || c.FallbackAfter < 0:
		return errors.New("cannot start heartbeater: durations and FallbackAfter must not be negative")
	}
	return nil
}

// connIDLen is the length of a made-up connection id: 12 random bytes in
// base64url, 96 bits, so ids of one session do not collide.
const connIDLen = 16

// newConnID returns a random connection id of connIDLen base64url characters.
func newConnID() string {
	var b [connIDLen * 3 / 4]byte
	crand.Read(b[:]) // never fails (crypto/rand's documented behaviour)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.Conn == "" {
		c.Conn = newConnID()
	}
	if c.Interval == 0 {
		c.Interval = defaultInterval
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = defaultAckTimeout
	}
	if c.MaxAckTimeout == 0 {
		c.MaxAckTimeout = defaultMaxAckTimeout
	}
	c.MaxAckTimeout = max(c.MaxAckTimeout, c.AckTimeout)
	if c.FallbackAfter == 0 {
		c.FallbackAfter = defaultFallbackAfter
	}
	if c.UDPRetryAfter == 0 {
		c.UDPRetryAfter = defaultUDPRetryAfter
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	return c
}

// Status is a snapshot of a heartbeater, from Heartbeater.Status.
type Status struct {
	// Transport carried the last acknowledged heartbeat ("" before the first).
	Transport Transport
	// LastAck is when the server last accepted a heartbeat (zero before the first).
	LastAck time.Time
	// Interval and TTL are the server's interval_ms and ttl_ms (or the
	// defaults until a reply carried them).
	Interval, TTL time.Duration
	// Acked counts heartbeats the server accepted.
	Acked uint64
	// Sent counts datagrams and HTTP requests sent; Resent the datagrams
	// sent again because an ack did not come in time.
	Sent, Resent uint64
	// Fallbacks counts switches from UDP to HTTP after silence.
	Fallbacks uint64
	// TokenRefreshes counts new tokens obtained from Config.TokenFunc.
	TokenRefreshes uint64
	// LastError is the last failure (nil before any) and LastErrorAt its time.
	LastError   error
	LastErrorAt time.Time
}

// Heartbeater keeps one connection (Config.Conn) of one session
// (Config.User, Config.Room) alive: it sends a heartbeat at once and then
// every interval the server asks for, over UDP with an ack, resent with
// backoff when the ack does not come, and over HTTP when UDP stays silent or
// a state must be set.
//
// Its methods are safe for concurrent use. It runs one goroutine, which ends
// when the context given to StartHeartbeater is done or at Close or Leave;
// Close (or Leave) must be called to release the UDP socket.
type Heartbeater struct {
	cfg    Config
	conn   *net.UDPConn // nil without Config.UDPAddr
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop goroutine returns
	wake   chan struct{} // 1-buffered: send a heartbeat now (SetState)
	acked  chan struct{} // closed at the first ack

	// life serializes Leave and Close.
	life struct {
		sync.Mutex
		closed bool
	}

	mu struct {
		sync.Mutex
		st        Status
		token     string
		state     []byte // JSON to send over HTTP; nil: nothing to set
		stateGen  uint64 // bumped by SetState
		stateSent uint64 // the stateGen the server has
	}

	// Owned by the goroutine that sends (the loop, then Leave).
	seq        uint32
	buf, rbuf  []byte
	onHTTPTill time.Time // after a fallback: heartbeats use HTTP until then
}

// StartHeartbeater validates cfg, opens the UDP socket and starts
// heartbeating until ctx is done or Close or Leave is called.
func StartHeartbeater(ctx context.Context, cfg Config) (*Heartbeater, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	h := &Heartbeater{
		cfg:   cfg,
		done:  make(chan struct{}),
		wake:  make(chan struct{}, 1),
		acked: make(chan struct{}),
		seq:   rand.Uint32(),
		buf:   make([]byte, 0, wire.MaxDatagram),
		rbuf:  make([]byte, wire.MaxDatagram),
	}
	h.mu.token = cfg.Token
	h.mu.st.Interval, h.mu.st.TTL = cfg.Interval, defaultTTL
	if cfg.State != nil {
		b, err := marshalState(cfg.State)
		if err != nil {
			return nil, err
		}
		h.mu.state, h.mu.stateGen = b, 1
	}
	if cfg.UDPAddr != "" {
		addr, err := net.ResolveUDPAddr("udp", cfg.UDPAddr)
		if err != nil {
			return nil, fmt.Errorf("cannot resolve UDP address %q: %w", cfg.UDPAddr, err)
		}
		if h.conn, err = net.DialUDP("udp", nil, addr); err != nil {
			return nil, fmt.Errorf("cannot open UDP socket to %s: %w", cfg.UDPAddr, err)
		}
	}
	ctx, h.cancel = context.WithCancel(ctx)
	go h.run(ctx)
	return h, nil
}

// marshalState encodes v, which must encode to a JSON object or null.
func marshalState(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot encode state: %w", err)
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || (t[0] != '{' && string(t) != "null") {
		return nil, errors.New("cannot encode state: it must be a JSON object or null")
	}
	return b, nil
}

// SetState sets the session state (a JSON object; nil or json.RawMessage
// ("null") clears it) and sends it with a heartbeat over HTTP at once. UDP
// heartbeats keep the state the server holds. It needs Config.BaseURL.
func (h *Heartbeater) SetState(v any) error {
	if h.cfg.BaseURL == "" {
		return errors.New("cannot set state: it travels over HTTP and Config.BaseURL is empty")
	}
	if v == nil {
		v = json.RawMessage("null")
	}
	b, err := marshalState(v)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.mu.state = b
	h.mu.stateGen++
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return nil
}

// Conn returns the connection id the heartbeater sends (Config.Conn, or the
// one it made up).
func (h *Heartbeater) Conn() string { return h.cfg.Conn }

// Status returns a snapshot of the heartbeater's state.
func (h *Heartbeater) Status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.st
}

// WaitAck returns once the server has accepted a heartbeat of this
// heartbeater (at once if it already has), with ctx's error, or with
// ErrClosed when the heartbeater stopped before any was accepted.
func (h *Heartbeater) WaitAck(ctx context.Context) error {
	select {
	case <-h.acked:
		return nil
	case <-h.done:
		select {
		case <-h.acked:
			return nil
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops heartbeating and releases the socket, without a leave: the
// session ends at its TTL. It waits for the goroutine to end and returns
// nil on later calls.
func (h *Heartbeater) Close() error {
	h.life.Lock()
	defer h.life.Unlock()
	if h.life.closed {
		return nil
	}
	h.life.closed = true
	h.stop()
	if h.conn != nil {
		return h.conn.Close()
	}
	return nil
}

// Leave stops heartbeating, ends the heartbeater's connection at once with
// a leave naming it (over the transport in use, with the same resends and
// fallback as heartbeats) and releases the socket. The session ends with it
// unless other connections hold it (another device or process of the same
// user and room). With an empty Config.Room the leave is for all the
// user's rooms. It returns ErrClosed after Close or a previous Leave.
func (h *Heartbeater) Leave(ctx context.Context) error {
	h.life.Lock()
	defer h.life.Unlock()
	if h.life.closed {
		return ErrClosed
	}
	h.life.closed = true
	h.stop()
	err := h.exchange(ctx, wire.OpLeave)
	if err != nil {
		h.fail(err)
	}
	if h.conn != nil {
		h.conn.Close()
	}
	return err
}

// stop ends the loop goroutine and waits for it.
func (h *Heartbeater) stop() {
	h.cancel()
	<-h.done
}

// run heartbeats until ctx is done.
func (h *Heartbeater) run(ctx context.Context) {
	defer close(h.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-h.wake:
			// A state to send: not within a second of the last accepted
			// heartbeat, which the server's --heartbeat-min-gap (1 s by
			// default) would refuse.
			if last := h.Status().LastAck; !last.IsZero() {
				if d := retryBase - time.Since(last); d > 0 {
					timer.Reset(d)
					select {
					case <-ctx.Done():
						return
					case <-timer.C:
					}
				}
			}
		}
		var wait time.Duration
		if err := h.exchange(ctx, wire.OpHeartbeat); err == nil {
			failures = 0
			// Up to 10% early, so many clients started together spread out.
			wait = jitter(h.interval(), 0.9, 1.0)
		} else {
			if ctx.Err() != nil {
				return
			}
			h.fail(err)
			failures++
			wait = jitter(min(h.interval(), retryBase<<min(failures-1, 16)), 0.8, 1.2)
		}
		timer.Reset(wait)
	}
}

// exchange sends one heartbeat or leave and waits for its answer; when the
// token is refused (or known to be expired), it asks Config.TokenFunc for a
// new one and tries once more.
func (h *Heartbeater) exchange(ctx context.Context, op wire.Op) error {
	if h.cfg.TokenFunc != nil && tokenExpired(h.token(), time.Now()) {
		if err := h.refresh(ctx, ErrTokenExpired); err != nil {
			return err
		}
	}
	err := h.send(ctx, op)
	if isTokenError(err) && h.cfg.TokenFunc != nil && ctx.Err() == nil {
		if rerr := h.refresh(ctx, err); rerr != nil {
			return errors.Join(err, rerr)
		}
		err = h.send(ctx, op)
	}
	return err
}

// refresh asks Config.TokenFunc for a new token.
func (h *Heartbeater) refresh(ctx context.Context, reason error) error {
	tok, err := h.cfg.TokenFunc(ctx, reason)
	if err != nil {
		return fmt.Errorf("cannot get a new token: %w", err)
	}
	if len(tok) > wire.MaxTokenLen {
		return fmt.Errorf("cannot use the new token: longer than %d bytes", wire.MaxTokenLen)
	}
	h.mu.Lock()
	h.mu.token = tok
	h.mu.st.TokenRefreshes++
	h.mu.Unlock()
	return nil
}

// send picks the transport: UDP unless there is none, a state is to be set,
// or a fallback is in force; HTTP after FallbackAfter silent datagrams.
func (h *Heartbeater) send(ctx context.Context, op wire.Op) error {
	var state []byte
	var stateGen uint64
	if op == wire.OpHeartbeat {
		h.mu.Lock()
		if h.mu.stateSent != h.mu.stateGen {
			state, stateGen = h.mu.state, h.mu.stateGen
		}
		h.mu.Unlock()
	}
	now := time.Now()
	hasHTTP := h.cfg.BaseURL != ""
	if h.conn != nil && (!hasHTTP || (state == nil && !now.Before(h.onHTTPTill))) {
		err := h.sendUDP(ctx, op)
		if !errors.Is(err, ErrNoReply) || !hasHTTP || ctx.Err() != nil {
			return err
		}
		h.fail(err)
		h.onHTTPTill = time.Now().Add(h.cfg.UDPRetryAfter)
		h.mu.Lock()
		h.mu.st.Fallbacks++
		h.mu.Unlock()
	}
	fellBack := !h.onHTTPTill.IsZero()
	err := h.sendHTTP(ctx, op, state)
	switch {
	case state == nil:
	case err == nil:
		h.markStateSent(stateGen)
	case errors.Is(err, ErrBadRequest):
		// The server refused the state (e.g. over --max-state-bytes) and
		// applied nothing: drop it, and keep the session alive without.
		h.markStateSent(stateGen)
		h.fail(err)
		return h.send(ctx, op)
	case !isTokenError(err) && h.conn != nil && now.After(h.onHTTPTill) && ctx.Err() == nil:
		// HTTP failed, UDP may not: keep the session alive over UDP and
		// try the state again with the next heartbeat.
		h.fail(err)
		return h.sendUDP(ctx, op)
	}
	if fellBack && isTokenError(err) {
		// The token, not the network, explains the silence over UDP
		// (the server does not answer unauthenticated datagrams).
		h.onHTTPTill = time.Time{}
	}
	return err
}

// markStateSent records that the server holds (or refused) state gen.
func (h *Heartbeater) markStateSent(gen uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen > h.mu.stateSent {
		h.mu.stateSent = gen
	}
}

// sendUDP sends op with an ack request, resending after AckTimeout (doubled
// each time, with jitter) up to FallbackAfter datagrams. A reply to any of
// them answers.
func (h *Heartbeater) sendUDP(ctx context.Context, op wire.Op) error {
	first := h.seq + 1
	var lastErr error
	for attempt := range h.cfg.FallbackAfter {
		tok := h.token()
		if attempt > 0 && h.cfg.TokenFunc != nil && tokenExpired(tok, time.Now()) {
			return fmt.Errorf("cannot send %s over udp: %w", op, ErrTokenExpired)
		}
		h.seq++
		req, err := wire.AppendRequest(h.buf[:0], h.seq, true, []wire.Item{{
			Op: op, User: []byte(h.cfg.User), Room: []byte(h.cfg.Room), Conn: []byte(h.cfg.Conn), Token: []byte(tok),
		}})
		if err != nil {
			return fmt.Errorf("cannot encode %s: %w", op, err)
		}
		h.buf = req[:0]
		h.count(attempt > 0)
		if _, err := h.conn.Write(req); err != nil {
			lastErr = err // e.g. ECONNREFUSED from an earlier ICMP error; wait anyway
		}
		timeout := min(h.cfg.AckTimeout<<min(attempt, 16), h.cfg.MaxAckTimeout)
		var rep wire.Reply
		err = h.awaitReply(ctx, first, h.seq, time.Now().Add(jitter(timeout, 0.8, 1.2)), &rep)
		switch {
		case err == nil:
			return h.handleReply(op, &rep, attempt)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, net.ErrClosed):
			return fmt.Errorf("cannot send %s over udp: %w", op, err)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			lastErr = err
		}
	}
	if lastErr != nil {
		return fmt.Errorf("cannot send %s over udp: %d datagrams without ack: %w (last error: %v)", op, h.cfg.FallbackAfter, ErrNoReply, lastErr)
	}
	return fmt.Errorf("cannot send %s over udp: %d datagrams without ack: %w", op, h.cfg.FallbackAfter, ErrNoReply)
}

// awaitReply reads until a one-item reply with a seq in [first, last]
// arrives, the deadline passes or ctx is done.
func (h *Heartbeater) awaitReply(ctx context.Context, first, last uint32, deadline time.Time, rep *wire.Reply) error {
	stop := context.AfterFunc(ctx, func() { h.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := h.conn.SetReadDeadline(deadline); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for {
		n, err := h.conn.Read(h.rbuf)
		if err != nil {
			return err // the deadline, or e.g. ECONNREFUSED (ICMP port unreachable): no reply to this datagram
		}
		if rep.Decode(h.rbuf[:n]) != nil || len(rep.Statuses()) != 1 || rep.Seq-first > last-first {
			continue // not ours (a late reply to an earlier heartbeat)
		}
		return nil
	}
}

// handleReply applies a UDP reply: its timing, and its status as an error.
func (h *Heartbeater) handleReply(op wire.Op, rep *wire.Reply, attempt int) error {
	if rep.HasTiming {
		h.setTiming(int64(rep.IntervalMs), int64(rep.TTLMs))
	}
	st := rep.Statuses()[0]
	err := statusError(st)
	if errors.Is(err, ErrRateLimited) && attempt > 0 && op == wire.OpHeartbeat {
		// An earlier datagram of this heartbeat was applied and only its
		// ack was lost: the resend fell within --heartbeat-min-gap.
		err = nil
	}
	if err != nil {
		return fmt.Errorf("cannot send %s over udp: %w (status %d)", op, err, st)
	}
	h.ok(op, TransportUDP)
	return nil
}

// sendHTTP sends op as POST /v1/heartbeat or /v1/leave, with state when
// not nil.
func (h *Heartbeater) sendHTTP(ctx context.Context, op wire.Op, state []byte) error {
	body := struct {
		User  string          `json:"user"`
		Room  string          `json:"room,omitempty"`
		Conn  string          `json:"conn"`
		Token string          `json:"token,omitempty"`
		State json.RawMessage `json:"state,omitempty"`
	}{h.cfg.User, h.cfg.Room, h.cfg.Conn, h.token(), state}
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("cannot encode %s: %w", op, err)
	}
	path := "/v1/heartbeat"
	if op == wire.OpLeave {
		path = "/v1/leave"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.BaseURL+path, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("cannot send %s over http: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	h.count(false)
	resp, err := h.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot send %s over http: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("cannot read %s answer over http: %w", op, err)
	}
	var ans struct {
		IntervalMs int64  `json:"interval_ms"`
		TTLMs      int64  `json:"ttl_ms"`
		Error      string `json:"error"`
	}
	_ = json.Unmarshal(data, &ans) // an undecodable answer leaves ans zero
	if resp.StatusCode != http.StatusOK {
		msg := ans.Error
		if msg == "" {
			msg = strings.TrimSpace(string(data))
		}
		return fmt.Errorf("cannot send %s over http: %w (%d %s)", op, httpError(resp.StatusCode, msg), resp.StatusCode, msg)
	}
	h.setTiming(ans.IntervalMs, ans.TTLMs)
	h.ok(op, TransportHTTP)
	return nil
}

func (h *Heartbeater) token() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.token
}

func (h *Heartbeater) interval() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.st.Interval
}

// setTiming follows the server's interval_ms and ttl_ms; zeros keep the
// current values.
func (h *Heartbeater) setTiming(intervalMs, ttlMs int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if intervalMs > 0 {
		h.mu.st.Interval = time.Duration(intervalMs) * time.Millisecond
	}
	if ttlMs > 0 {
		h.mu.st.TTL = time.Duration(ttlMs) * time.Millisecond
	}
}

func (h *Heartbeater) count(resend bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.st.Sent++
	if resend {
		h.mu.st.Resent++
	}
}

// ok records an accepted heartbeat (a leave changes nothing here).
func (h *Heartbeater) ok(op wire.Op, tr Transport) {
	if op != wire.OpHeartbeat {
		return
	}
	h.mu.Lock()
	first := h.mu.st.Acked == 0
	h.mu.st.Acked++
	h.mu.st.LastAck = time.Now()
	h.mu.st.Transport = tr
	h.mu.Unlock()
	if first {
		close(h.acked)
	}
}

// fail records err and hands it to Config.OnError.
func (h *Heartbeater) fail(err error) {
	h.mu.Lock()
	h.mu.st.LastError, h.mu.st.LastErrorAt = err, time.Now()
	h.mu.Unlock()
	if h.cfg.OnError != nil {
		h.cfg.OnError(err)
	}
}

// jitter returns d scaled by a random factor in [lo, hi).
func jitter(d time.Duration, lo, hi float64) time.Duration {
	return time.Duration(float64(d) * (lo + rand.Float64()*(hi-lo)))
}

// tokenExpired reports whether tok is a token of PROTOCOL.md whose expiry
// (unix seconds, its second field) is not after now. Tokens it cannot read
// are left to the server to judge.
func tokenExpired(tok string, now time.Time) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 4 {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	return err == nil && exp <= now.Unix()
}
