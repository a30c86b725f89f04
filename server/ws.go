package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/jsonbody"
	"github.com/presenced/presenced/server/wire"
	"github.com/presenced/presenced/shardmap"
)

// WebSocket (GET /v1/ws, README "WebSocket").
//
// Each connection has three kinds of goroutine:
//
//	reader (fasthttp's hijack goroutine): parses ops, applies them, queues answers
//	subscription pumps (one per subscribe): bus.Next -> queue
//	writer (one): queue -> frames, and the pings
//
// Only the writer writes data frames; the reader writes close frames with
// WriteControl, which the library allows beside a writer. The queue is
// bounded: a pump that finds it full waits (the bus then marks it behind
// and it re-reads from the history), a reader that finds it full waits too,
// so a client that does not read stops being read.
//
// When the reader returns, the sessions the socket heartbeated and did not
// leave end with reason disconnect (held by --leave-delay like any leave), except at
// shutdown, when they are kept: the node is going away, not the client.

// wsOutQueue is the writer's queue length per connection, in frames.
const wsOutQueue = 64

// wsLimit labels a limit hit in presenced_ws_limited_total.
type wsLimit uint8

const (
	wsLimitConns wsLimit = iota
	wsLimitMessageSize
	wsLimitMessageRate
	wsLimitSubscriptions
	wsLimitSessions
	numWSLimits
)

var wsLimitLabel = [numWSLimits]string{"max_ws_conns", "ws_max_message_bytes", "ws_message_rate", "ws_max_subscriptions", "ws_max_sessions"}

// wsClose labels why a connection ended in presenced_ws_closed_total.
type wsClose uint8

const (
	wsClosePeer        wsClose = iota // the client closed or the connection broke
	wsClosePingTimeout                // no pong within 2 ping intervals
	wsCloseMessageSize
	wsCloseMessageRate
	wsCloseShutdown
	wsCloseWriteError
	numWSCloses
)

var wsCloseLabel = [numWSCloses]string{"peer", "ping_timeout", "message_size", "message_rate", "shutdown", "write_error"}

// wsHub tracks the open connections so Shutdown can close them: fasthttp
// does not wait for hijacked connections.
type wsHub struct {
	mu struct {
		sync.Mutex
		conns  map[*wsConn]struct{}
		closed bool
	}
	wg       sync.WaitGroup
	open     atomic.Int64
	messages atomic.Uint64
	sent     atomic.Uint64
	limited  [numWSLimits]atomic.Uint64
	closes   [numWSCloses]atomic.Uint64
	upgrader websocket.FastHTTPUpgrader
}

func newWSHub() *wsHub {
	h := &wsHub{}
	h.mu.conns = map[*wsConn]struct{}{}
	h.upgrader = websocket.FastHTTPUpgrader{
		HandshakeTimeout: 10 * time.Second,
		// Messages are small: a 1 KB read buffer, and write buffers
		// borrowed from a pool only while a frame is written, so an idle
		// socket holds no write buffer.
		ReadBufferSize:  1024,
		WriteBufferPool: &sync.Pool{},
		// The server replaces this with --cors-origins (corsPolicy.allowWS).
		CheckOrigin: func(*fasthttp.RequestCtx) bool { return true },
		Error: func(ctx *fasthttp.RequestCtx, status int, err error) {
			jsonError(ctx, status, "cannot upgrade to websocket: "+err.Error())
		},
	}
	return h
}

func (h *wsHub) add(c *wsConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return false
	}
	h.mu.conns[c] = struct{}{}
	h.wg.Add(1)
	return true
}

func (h *wsHub) remove(c *wsConn) {
	h.mu.Lock()
	delete(h.mu.conns, c)
	h.mu.Unlock()
	h.wg.Done()
}

// shutdown closes every connection with 1001 (going away) and waits, up to
// ctx, for their goroutines. Their sessions are kept.
func (s *Server) closeWS(ctx context.Context) error {
	h := s.ws
	h.mu.Lock()
	h.mu.closed = true
	conns := make([]*wsConn, 0, len(h.mu.conns))
	for c := range h.mu.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.shutdown.Store(true)
		c.closeWith(wsCloseShutdown, websocket.CloseGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cannot close websockets: %w", ctx.Err())
	}
}

// wsConn is one WebSocket connection.
type wsConn struct {
	s    *Server
	c    *websocket.Conn
	out  chan []byte
	done chan struct{} // closed when the connection ends
	// authAll: the socket showed an API token (or none is configured) and
	// may subscribe to all rooms and to any room.
	authAll  bool
	shutdown atomic.Bool
	reason   atomic.Int32 // wsClose + 1 once decided
	closing  sync.Once
	pumps    sync.WaitGroup // subscription pumps, waited for when the connection ends

	// id is the socket's own connection id: the connection its heartbeats
	// and leaves speak for when they name none.
	id string

	// Reader-owned.
	subs   map[wsSubKey]*wsSub
	tokens float64 // rate bucket
	last   time.Time

	// sessions are the sessions the socket heartbeated and did not leave:
	// the reader changes them, the pumps of subscriptions they grant read
	// them (member).
	smu      sync.Mutex
	sessions map[wsSessKey]struct{}
}

type wsSubKey struct {
	room string
	all  bool
}

type wsSessKey struct{ user, room, conn string }

type wsSub struct {
	key  wsSubKey
	sub  *events.Sub
	wake chan time.Time // closed to stop the pump
	// byMember: granted by a session in the room, not by an API token; it
	// ends when no such session is left (the pump sets ended and tells
	// the socket).
	byMember bool
	ended    atomic.Bool
}

// hWS upgrades GET /v1/ws.
func (s *Server) hWS(ctx *fasthttp.RequestCtx) {
	full := fmt.Sprintf("too many websocket connections (max-ws-conns %d)", s.cfg.MaxWSConns)
	if s.ws.open.Load() >= int64(s.cfg.MaxWSConns) {
		s.ws.limited[wsLimitConns].Add(1)
		jsonError(ctx, fasthttp.StatusServiceUnavailable, full)
		return
	}
	authAll := s.wsAuthorized(ctx)
	raw := ctx.Conn() // fasthttp hands the upgrade a wrapper of it
	// The count is taken once the connection is ours (fasthttp may never
	// run the handler when the 101 cannot be written); upgrades racing
	// past the check above are closed with 1013 (try again later).
	_ = s.ws.upgrader.Upgrade(ctx, func(c *websocket.Conn) {
		defer s.ws.open.Add(-1)
		if s.ws.open.Add(1) > int64(s.cfg.MaxWSConns) {
			s.ws.limited[wsLimitConns].Add(1)
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseTryAgainLater, full), time.Now().Add(time.Second))
			_ = c.Close()
			return
		}
		if lc, ok := raw.(*limitedConn); ok {
			lc.upgrade()
		}
		wc := &wsConn{s: s, c: c, out: make(chan []byte, wsOutQueue), done: make(chan struct{}),
			authAll: authAll, subs: map[wsSubKey]*wsSub{}, sessions: map[wsSessKey]struct{}{}, id: newConnID(),
			tokens: float64(wsBurst(s.cfg.WSMessageRate)), last: time.Now()}
		if !s.ws.add(wc) {
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), time.Now().Add(time.Second))
			_ = c.Close()
			return
		}
		defer s.ws.remove(wc)
		wc.run()
	})
}

// wsAuthorized reports whether the upgrade request carries an API token
// (bearer header or ?access_token=), or none is configured.
func (s *Server) wsAuthorized(ctx *fasthttp.RequestCtx) bool {
	toks := s.apiTokens.Load()
	if toks == nil {
		return true
	}
	got, ok := bytes.CutPrefix(ctx.Request.Header.Peek("Authorization"), []byte("Bearer "))
	if !ok {
		got = ctx.QueryArgs().Peek("access_token")
	}
	if len(got) == 0 {
		return false
	}
	match := 0
	for _, t := range *toks {
		match |= subtle.ConstantTimeCompare(got, t)
	}
	return match == 1
}

func wsBurst(rate int) int { return max(2*rate, 1) }

// run is the reader loop; it returns when the connection ends.
func (c *wsConn) run() {
	s := c.s
	ping := s.cfg.WSPingInterval
	c.c.SetReadLimit(int64(s.cfg.WSMaxMessageBytes))
	deadline := func() { _ = c.c.SetReadDeadline(time.Now().Add(2 * ping)) }
	deadline()
	c.c.SetPongHandler(func(string) error { deadline(); return nil })
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	defer func() {
		c.closeWith(wsClosePeer, websocket.CloseNormalClosure, "")
		for _, sub := range c.subs {
			c.stopSub(sub)
		}
		c.pumps.Wait()
		<-writerDone
		_ = c.c.Close()
		if !c.shutdown.Load() {
			c.disconnect()
		}
	}()
	for {
		mt, msg, err := c.c.ReadMessage()
		if err != nil {
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				s.ws.limited[wsLimitMessageSize].Add(1)
				c.closeWith(wsCloseMessageSize, websocket.CloseMessageTooBig,
					fmt.Sprintf("message exceeds ws-max-message-bytes (%d)", s.cfg.WSMaxMessageBytes))
			case isTimeout(err):
				c.closeWith(wsClosePingTimeout, websocket.CloseGoingAway, "no pong within 2 ping intervals")
			}
			return
		}
		deadline()
		s.ws.messages.Add(1)
		if !c.allow() {
			s.ws.limited[wsLimitMessageRate].Add(1)
			c.closeWith(wsCloseMessageRate, websocket.ClosePolicyViolation,
				fmt.Sprintf("more than ws-message-rate (%d messages/s) sustained", s.cfg.WSMessageRate))
			return
		}
		var ans []byte
		if mt != websocket.TextMessage {
			ans = wsError(nil, "binary frames are not supported: send JSON text frames")
		} else {
			ans = c.handle(msg)
		}
		if ans != nil && !c.send(ans) {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// allow takes one message from the connection's rate bucket.
func (c *wsConn) allow() bool {
	rate := c.s.cfg.WSMessageRate
	if rate <= 0 {
		return true
	}
	now := time.Now()
	c.tokens = min(c.tokens+now.Sub(c.last).Seconds()*float64(rate), float64(wsBurst(rate)))
	c.last = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// send queues one frame for the writer; false once the connection ended.
func (c *wsConn) send(b []byte) bool {
	select {
	case c.out <- b:
		return true
	case <-c.done:
		return false
	}
}

// closeWith ends the connection once: it records why, sends a close frame
// with code and text, and stops the writer. The reader then fails.
func (c *wsConn) closeWith(why wsClose, code int, text string) {
	c.closing.Do(func() {
		c.s.ws.closes[why].Add(1)
		c.reason.Store(int32(why) + 1)
		close(c.done)
		_ = c.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
		// Unblock the reader: a peer that does not answer the close frame
		// is not waited for longer than a second.
		_ = c.c.SetReadDeadline(time.Now().Add(time.Second))
	})
}

// writeLoop is the connection's one writer: queued frames and pings.
func (c *wsConn) writeLoop() {
	s := c.s
	t := time.NewTicker(s.cfg.WSPingInterval)
	defer t.Stop()
	wt := s.cfg.HTTPWriteTimeout
	if wt <= 0 {
		wt = 10 * time.Second
	}
	for {
		select {
		case <-c.done:
			return
		case b := <-c.out:
			_ = c.c.SetWriteDeadline(time.Now().Add(wt))
			if err := c.c.WriteMessage(websocket.TextMessage, b); err != nil {
				c.closeWith(wsCloseWriteError, websocket.CloseGoingAway, "write failed")
				return
			}
		case <-t.C:
			if err := c.c.WriteControl(websocket.PingMessage, nil, time.Now().Add(wt)); err != nil {
				c.closeWith(wsCloseWriteError, websocket.CloseGoingAway, "write failed")
				return
			}
		}
	}
}

// wsRequest is one client message.
type wsRequest struct {
	Op    string          `json:"op"`
	Ref   json.RawMessage `json:"ref"`
	User  string          `json:"user"`
	Room  *string         `json:"room"`
	Token string          `json:"token"`
	Since string          `json:"since"`
	State json.RawMessage `json:"state"`
	Conn  *string         `json:"conn"`
}

// wsError renders an error answer.
func wsError(ref json.RawMessage, msg string) []byte {
	b := []byte{'{'}
	if len(ref) > 0 {
		b = append(b, `"ref":`...)
		b = append(b, ref...)
		b = append(b, ',')
	}
	b = append(b, `"error":`...)
	b = appendJSONString(b, msg)
	return append(b, '}')
}

// wsOK renders a success answer; extra is more members (`"k":v,...`) or empty.
func wsOK(ref json.RawMessage, op string, extra []byte) []byte {
	b := []byte{'{'}
	if len(ref) > 0 {
		b = append(b, `"ref":`...)
		b = append(b, ref...)
		b = append(b, ',')
	}
	b = append(b, `"ok":true,"op":`...)
	b = appendJSONString(b, op)
	if len(extra) > 0 {
		b = append(b, ',')
		b = append(b, extra...)
	}
	return append(b, '}')
}

// conn is the connection the request speaks for: its "conn", or the
// socket's own id when absent or null ("" names the session's default
// connection).
func (c *wsConn) conn(r *wsRequest) string {
	if r.Conn == nil {
		return c.id
	}
	return *r.Conn
}

// room is the request's room; "" when absent or null.
func (r *wsRequest) room() string {
	if r.Room == nil {
		return ""
	}
	return *r.Room
}

// handle applies one text message and returns its answer.
func (c *wsConn) handle(msg []byte) []byte {
	var req wsRequest
	err := json.Unmarshal(msg, &req)
	if len(req.Ref) > 0 && (req.Ref[0] != '"' && (req.Ref[0] < '0' || req.Ref[0] > '9') && req.Ref[0] != '-' || !utf8.Valid(req.Ref)) {
		return wsError(nil, "ref must be a string or a number")
	}
	if err != nil {
		// A field of the wrong type leaves the rest decoded: the answer
		// echoes the ref and names the field.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return wsError(req.Ref, wsTypeError(te.Field))
		}
		return wsError(nil, `message must be a JSON object {"op",...}`)
	}
	if jsonbody.HasLoneSurrogate(msg) {
		// encoding/json would turn it into U+FFFD: refused, as over HTTP.
		return wsError(req.Ref, "message escapes a lone UTF-16 surrogate: not valid JSON text for an id")
	}
	if !utf8.Valid(msg) {
		// encoding/json would read the bad bytes as U+FFFD, so two ids
		// would name one session: refused naming the field, as over HTTP.
		o, text := wsInvalidUTF8(msg)
		switch req.Op {
		case "heartbeat":
			c.s.met.count(trWS, o)
		case "leave":
			c.s.met.countLeave(trWS, o)
		}
		return wsError(req.Ref, text)
	}
	switch req.Op {
	case "heartbeat":
		return c.opHeartbeat(&req)
	case "leave":
		return c.opLeave(&req)
	case "subscribe":
		return c.opSubscribe(&req)
	case "unsubscribe":
		return c.opUnsubscribe(&req)
	case "":
		return wsError(req.Ref, "op is required: heartbeat, leave, subscribe or unsubscribe")
	}
	return wsError(req.Ref, fmt.Sprintf("unknown op %q: use heartbeat, leave, subscribe or unsubscribe", req.Op))
}

// wsTypeError is the answer for a message whose field is of the wrong
// JSON type.
func wsTypeError(field string) string {
	if field == "room" {
		return "room must be a string or null"
	}
	return field + " must be a string"
}

// wsInvalidUTF8 names the field of a message that holds bytes that are not
// UTF-8, with the outcome counted for it: the answer HTTP gives for the
// same id or state.
func wsInvalidUTF8(msg []byte) (outcome, string) {
	var raw struct{ User, Room, State json.RawMessage }
	_ = json.Unmarshal(msg, &raw)
	switch {
	case !utf8.Valid(raw.User):
		return outBadUser, outcomeInfo[outBadUser].msg
	case !utf8.Valid(raw.Room):
		return outBadRoom, outcomeInfo[outBadRoom].msg
	case !utf8.Valid(raw.State):
		return outBadRequest, stateNotUTF8
	}
	return outBadRequest, "message must be UTF-8 text"
}

// intakeError says why heartbeats and leaves are not taken now, or "".
func (c *wsConn) intakeError() string {
	switch c.s.state.Load() {
	case stateReady, stateDraining:
		return ""
	case stateStarting:
		return "not ready: replaying the write-ahead log"
	}
	return "shutting down"
}

func (c *wsConn) opHeartbeat(req *wsRequest) []byte {
	s := c.s
	if msg := c.intakeError(); msg != "" {
		return wsError(req.Ref, msg)
	}
	room := req.room()
	// State as over HTTP: omitted keeps it, null clears it, an object sets it.
	has, raw := len(req.State) > 0, []byte(req.State)
	if bytes.Equal(raw, []byte("null")) {
		raw = nil
	} else if has && raw[0] != '{' {
		s.met.count(trWS, outBadRequest)
		return wsError(req.Ref, "state must be a JSON object or null")
	}
	if has && raw != nil && errors.Is(jsonbody.CheckDepth(raw), jsonbody.ErrTooDeep) {
		s.met.count(trWS, outBadRequest)
		return wsError(req.Ref, tooDeep)
	}
	sop, msg := s.stateOp(has, raw)
	if msg != "" {
		s.met.count(trWS, outBadRequest)
		return wsError(req.Ref, msg)
	}
	conn := c.conn(req)
	key := wsSessKey{req.User, room, conn}
	c.smu.Lock()
	_, held := c.sessions[key]
	n := len(c.sessions)
	c.smu.Unlock()
	if !held && n >= s.cfg.WSMaxSessions {
		s.ws.limited[wsLimitSessions].Add(1)
		return wsError(req.Ref, fmt.Sprintf("socket holds too many sessions (ws-max-sessions %d)", s.cfg.WSMaxSessions))
	}
	if o := s.heartbeatState(trWS, []byte(req.User), []byte(room), []byte(conn), []byte(req.Token), time.Now().UnixMilli(), sop); o != outOK {
		return wsError(req.Ref, outcomeInfo[o].msg)
	}
	c.smu.Lock()
	c.sessions[key] = struct{}{}
	c.smu.Unlock()
	iv, ttl := s.timing()
	return wsOK(req.Ref, "heartbeat", fmt.Appendf(nil, `"interval_ms":%d,"ttl_ms":%d`, iv, ttl))
}

func (c *wsConn) opLeave(req *wsRequest) []byte {
	s := c.s
	if msg := c.intakeError(); msg != "" {
		return wsError(req.Ref, msg)
	}
	room := req.room()
	conn := c.conn(req)
	if req.Conn == nil && !c.holdsConn(req.User, room) {
		conn = "" // not this socket's session: the leave ends it whole, as over HTTP
	}
	n, o := s.leave(trWS, []byte(req.User), []byte(room), []byte(conn), []byte(req.Token), time.Now().UnixMilli())
	if o != outOK {
		return wsError(req.Ref, outcomeInfo[o].msg)
	}
	c.smu.Lock()
	if room == "" {
		for k := range c.sessions {
			if k.user == req.User && (conn == "" || k.conn == conn) {
				delete(c.sessions, k)
			}
		}
	} else {
		for k := range c.sessions {
			if k.user == req.User && k.room == room && (conn == "" || k.conn == conn) {
				delete(c.sessions, k)
			}
		}
	}
	c.smu.Unlock()
	// The subscriptions the left sessions granted end now, not at the
	// (possibly held) leave event.
	for key, sub := range c.subs {
		if sub.byMember && !sub.ended.Load() && !c.member(key.room) {
			delete(c.subs, key)
			c.stopSub(sub)
			if !c.send(wsUnsubscribed(key.room)) {
				return nil
			}
		}
	}
	return wsOK(req.Ref, "leave", fmt.Appendf(nil, `"left":%d`, n))
}

// holdsConn reports whether the socket heartbeated, with its own
// connection id, the user's session in room (any of their sessions for an
// empty room).
func (c *wsConn) holdsConn(user, room string) bool {
	c.smu.Lock()
	defer c.smu.Unlock()
	for k := range c.sessions {
		if k.user == user && k.conn == c.id && (room == "" || k.room == room) {
			return true
		}
	}
	return false
}

// member reports whether a session the socket heartbeated in room is still
// in the table, not left and not expired: what lets the socket subscribe
// to room without an API token. The room-less session grants no
// subscription (room "" would carry every user's room-less sessions).
func (c *wsConn) member(room string) bool {
	if room == "" {
		return false
	}
	var users []string
	c.smu.Lock()
	for k := range c.sessions {
		if k.room == room {
			users = append(users, k.user)
		}
	}
	c.smu.Unlock()
	now := time.Now().UnixMilli()
	for _, u := range users {
		rooms, _, _ := c.s.m.User([]byte(u), nil)
		for _, r := range rooms {
			if r.Room == room && r.Expiry > now {
				return true
			}
		}
	}
	return false
}

// wsUnsubscribed is the notice that a subscription granted by a session
// ended because the session did.
func wsUnsubscribed(room string) []byte {
	b := appendJSONString([]byte(`{"op":"unsubscribed","room":`), room)
	return append(b, `,"reason":"membership_ended"}`...)
}

// pruneSubs forgets the subscriptions whose pump ended them.
func (c *wsConn) pruneSubs() {
	for key, sub := range c.subs {
		if sub.ended.Load() {
			delete(c.subs, key)
			c.stopSub(sub)
		}
	}
}

func (c *wsConn) opSubscribe(req *wsRequest) []byte {
	s := c.s
	key := wsSubKey{all: req.Room == nil}
	if !key.all {
		key.room = *req.Room
		if !wire.ValidID([]byte(key.room), true) {
			return wsError(req.Ref, outcomeInfo[outBadRoom].msg)
		}
	}
	switch {
	case key.all && !c.authAll:
		return wsError(req.Ref, "subscribing to all rooms needs an API token: connect with ?access_token= or Authorization: Bearer")
	case !key.all && !c.authAll && key.room == "":
		return wsError(req.Ref, `subscribing to room "" needs an API token: a session without a room grants no subscription`)
	case !key.all && !c.authAll && !c.member(key.room):
		return wsError(req.Ref, "subscribing to this room needs a session in it on this socket (heartbeat first) or an API token")
	}
	var since *events.ID
	if req.Since != "" {
		id, ok := events.ParseID(req.Since)
		if !ok {
			return wsError(req.Ref, "since must be an event id (<ms>-<seq>)")
		}
		since = &id
	}
	c.pruneSubs()
	if _, ok := c.subs[key]; ok {
		return wsError(req.Ref, "already subscribed to this room")
	}
	if len(c.subs) >= s.cfg.WSMaxSubscriptions {
		s.ws.limited[wsLimitSubscriptions].Add(1)
		return wsError(req.Ref, fmt.Sprintf("too many subscriptions on this socket (ws-max-subscriptions %d)", s.cfg.WSMaxSubscriptions))
	}
	sub := s.bus.Subscribe(key.room, key.all, since)
	if sub == nil {
		return wsError(req.Ref, "shutting down")
	}
	ws := &wsSub{key: key, sub: sub, wake: make(chan time.Time), byMember: !c.authAll}
	c.subs[key] = ws
	// The answer goes first, then the pump's events.
	ans := wsOK(req.Ref, "subscribe", wsRoomField(key))
	if !c.send(ans) {
		return nil
	}
	c.pumps.Add(1)
	go func() {
		defer c.pumps.Done()
		c.pump(ws)
	}()
	return nil
}

func wsRoomField(key wsSubKey) []byte {
	if key.all {
		return []byte(`"room":null`)
	}
	return appendJSONString([]byte(`"room":`), key.room)
}

func (c *wsConn) opUnsubscribe(req *wsRequest) []byte {
	key := wsSubKey{all: req.Room == nil}
	if !key.all {
		key.room = *req.Room
	}
	c.pruneSubs()
	sub, ok := c.subs[key]
	if !ok {
		return wsError(req.Ref, "not subscribed to this room")
	}
	delete(c.subs, key)
	c.stopSub(sub)
	return wsOK(req.Ref, "unsubscribe", wsRoomField(key))
}

func (c *wsConn) stopSub(sub *wsSub) {
	c.s.bus.Unsubscribe(sub.sub)
	close(sub.wake)
}

// pump forwards one subscription's events to the writer until it is
// stopped, the bus closes or the connection ends.
func (c *wsConn) pump(ws *wsSub) {
	var evs []*events.Event
	var err error
	for {
		evs, err = c.s.bus.Next(ws.sub, evs[:0], maxStreamBatch, ws.wake)
		select {
		case <-ws.wake:
			return // unsubscribed: what Next returned is not sent
		default:
		}
		if ws.byMember && len(evs) > 0 && !c.member(ws.key.room) {
			// The session that granted it ended (timed out, or left
			// through another transport): the events are not sent.
			ws.ended.Store(true)
			c.s.bus.Unsubscribe(ws.sub)
			clear(evs)
			c.send(wsUnsubscribed(ws.key.room))
			return
		}
		for _, ev := range evs {
			if !c.send(ev.JSON()) {
				return
			}
			c.s.ws.sent.Add(1)
		}
		clear(evs)
		if err != nil {
			return
		}
	}
}

// disconnect ends the connections the socket heartbeated and did not
// leave, with reason disconnect: a session the socket held alone ends, one
// another connection still holds stays. The pumps have ended.
func (c *wsConn) disconnect() {
	s := c.s
	now := time.Now().UnixMilli()
	for k := range c.sessions {
		s.endConns([]byte(k.user), []byte(k.room), []byte(k.conn), now, shardmap.ReasonDisconnect, false)
	}
	clear(c.sessions)
}

// newConnID returns a random connection id for a WebSocket: 16 characters
// of base64url.
func newConnID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "ws-" + base64.RawURLEncoding.EncodeToString(b[:])
}

// registerWSMetrics adds the WebSocket metrics.
func (s *Server) registerWSMetrics() {
	r := s.reg
	h := s.ws
	r.gaugeFunc("presenced_ws_connections", "Open WebSocket connections (GET /v1/ws).", func() float64 { return float64(h.open.Load()) })
	r.counterFunc("presenced_ws_messages_total", "WebSocket messages received.", func() float64 { return float64(h.messages.Load()) })
	r.counterFunc("presenced_ws_events_sent_total", "Events sent on WebSocket subscriptions.", func() float64 { return float64(h.sent.Load()) })
	r.counterFuncVec("presenced_ws_limited_total", "WebSocket limits hit, by limit flag (connections refused, sockets closed, or ops refused).", "limit", func(emit func(string, float64)) {
		for i := range numWSLimits {
			emit(wsLimitLabel[i], float64(h.limited[i].Load()))
		}
	})
	r.counterFuncVec("presenced_ws_closed_total", "WebSocket connections ended, by reason.", "reason", func(emit func(string, float64)) {
		for i := range numWSCloses {
			emit(wsCloseLabel[i], float64(h.closes[i].Load()))
		}
	})
}
