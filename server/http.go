package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/jsonbody"
	"github.com/presenced/presenced/server/openapi"
	"github.com/presenced/presenced/server/wire"
)

// Query limits of the HTTP API (from the contract).
const (
	defaultMembersLimit = 100
	maxMembersLimit     = 1000
	defaultTopRooms     = 100
	maxTopRooms         = 1000
)

// httpScratch is the per-request working memory of the heartbeat handlers,
// pooled so a heartbeat allocates nothing.
type httpScratch struct {
	p     jsonbody.Parser
	hb    jsonbody.Heartbeat
	items []jsonbody.Heartbeat
	out   []byte
}

var scratchPool = sync.Pool{New: func() any { return &httpScratch{} }}

func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on --http-addr %s: %w", s.cfg.HTTPAddr, err)
	}
	// The connection limits are enforced by connLimiter, which answers in
	// JSON; fasthttp's own Concurrency is only a backstop above them.
	ln = newConnLimiter(ln, s.cfg.HTTPMaxConns, s.cfg.HTTPMaxConnsPerIP, s.proxies, s.met.httpConnRejected)
	s.httpLn = ln
	s.httpSrv = &fasthttp.Server{
		Handler:                       s.handleHTTP,
		ErrorHandler:                  s.handleHTTPError,
		Name:                          "presenced",
		MaxRequestBodySize:            s.cfg.MaxBodyBytes,
		ReadTimeout:                   s.cfg.HTTPReadTimeout,
		WriteTimeout:                  s.cfg.HTTPWriteTimeout,
		IdleTimeout:                   s.cfg.HTTPIdleTimeout,
		Concurrency:                   max(s.cfg.HTTPMaxConns, 0) + 256,
		CloseOnShutdown:               true,
		NoDefaultDate:                 true,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		Logger:                        fasthttpLogger{s.log},
	}
	s.routines.Go("http", func() {
		if err := s.httpSrv.Serve(ln); err != nil {
			s.log.Error("http server stopped", "err", err)
		}
	})
	return nil
}

func (s *Server) stopHTTP(ctx context.Context) error {
	if s.httpSrv == nil {
		return nil
	}
	return s.httpSrv.ShutdownWithContext(ctx)
}

type fasthttpLogger struct {
	log interface{ Debug(string, ...any) }
}

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}

// handleHTTPError answers requests fasthttp could not read.
func (s *Server) handleHTTPError(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		s.met.httpTooBig.Inc()
		jsonError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds max-body-bytes (%d)", s.cfg.MaxBodyBytes))
		return
	}
	jsonError(ctx, fasthttp.StatusBadRequest, "cannot read request: "+err.Error())
}

func (s *Server) handleHTTP(ctx *fasthttp.RequestCtx) {
	t0 := time.Now()
	rt := rtOther
	if !s.cors(ctx) {
		rt = s.route(ctx)
	}
	s.met.httpLatency[rt].ObserveDuration(time.Since(t0))
}

// route dispatches on the raw (still escaped) path, so an id holding an
// escaped slash stays one path segment.
func (s *Server) route(ctx *fasthttp.RequestCtx) route {
	path := ctx.URI().PathOriginal()
	switch string(path) {
	case "/v1/heartbeat":
		if methods(ctx, "GET", "POST") {
			s.hHeartbeat(ctx)
		}
		return rtHeartbeat
	case "/v1/heartbeats":
		if methods(ctx, "POST") {
			s.hHeartbeats(ctx)
		}
		return rtHeartbeats
	case "/v1/leave":
		if methods(ctx, "POST") {
			s.hLeave(ctx)
		}
		return rtLeave
	case "/v1/status":
		if methods(ctx, "POST") && s.queryReady(ctx) {
			s.hStatus(ctx)
		}
		return rtStatus
	case "/v1/rooms":
		if methods(ctx, "GET") && s.queryReady(ctx) {
			s.hTopRooms(ctx)
		}
		return rtRooms
	case "/v1/stats":
		if methods(ctx, "GET") && s.queryReady(ctx) {
			s.hStats(ctx)
		}
		return rtStats
	case "/v1/events":
		if methods(ctx, "GET") && s.apiAuthorized(ctx) {
			s.hEvents(ctx)
		}
		return rtEvents
	case "/v1/ws":
		if methods(ctx, "GET") {
			s.hWS(ctx)
		}
		return rtWS
	case "/livez":
		if methods(ctx, "GET") {
			jsonBody(ctx, 200, []byte(`{"status":"alive"}`))
		}
		return rtHealth
	case "/readyz":
		if methods(ctx, "GET") {
			s.hReady(ctx)
		}
		return rtHealth
	case "/metrics":
		if methods(ctx, "GET") {
			s.reg.serve(ctx)
		}
		return rtMetrics
	case "/openapi.json":
		if methods(ctx, "GET", "HEAD") {
			jsonBody(ctx, fasthttp.StatusOK, openapi.JSON)
		}
		return rtUI
	}
	if rest, ok := bytes.CutPrefix(path, []byte("/ui")); ok && (len(rest) == 0 || rest[0] == '/') {
		if methods(ctx, "GET", "HEAD") {
			s.hUI(ctx, string(rest))
		}
		return rtUI
	}
	if rest, ok := bytes.CutPrefix(path, []byte("/v1/users/")); ok && len(rest) > 0 && bytes.IndexByte(rest, '/') < 0 {
		if methods(ctx, "GET") && s.queryReady(ctx) {
			s.hUser(ctx, rest)
		}
		return rtUser
	}
	if rest, ok := bytes.CutPrefix(path, []byte("/v1/rooms/")); ok && len(rest) > 0 {
		room, members := rest, false
		if i := bytes.IndexByte(rest, '/'); i >= 0 {
			if string(rest[i:]) != "/members" {
				jsonError(ctx, fasthttp.StatusNotFound, "unknown path")
				return rtOther
			}
			room, members = rest[:i], true
		}
		if methods(ctx, "GET") && s.queryReady(ctx) {
			if members {
				s.hMembers(ctx, room)
				return rtMembers
			}
			s.hRoom(ctx, room)
		}
		if members {
			return rtMembers
		}
		return rtRoom
	}
	jsonError(ctx, fasthttp.StatusNotFound, "unknown path")
	return rtOther
}

// methods answers 405 with an Allow header unless the request uses one of allowed.
func methods(ctx *fasthttp.RequestCtx, allowed ...string) bool {
	m := ctx.Method()
	for _, a := range allowed {
		if string(m) == a {
			return true
		}
	}
	allow := allowed[0]
	for _, a := range allowed[1:] {
		allow += ", " + a
	}
	ctx.Response.Header.Set("Allow", allow)
	jsonError(ctx, fasthttp.StatusMethodNotAllowed, "method "+string(m)+" not allowed; use "+allow)
	return false
}

func jsonBody(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

func jsonError(ctx *fasthttp.RequestCtx, status int, msg string) {
	b := append([]byte(`{"error":`), appendJSONString(nil, msg)...)
	jsonBody(ctx, status, append(b, '}'))
}

func outcomeError(ctx *fasthttp.RequestCtx, o outcome) {
	jsonError(ctx, outcomeInfo[o].status, outcomeInfo[o].msg)
}

// intakeOpen reports whether heartbeats are taken: not while replaying the
// log, still while draining (the load balancer has not noticed yet).
func (s *Server) intakeOpen(ctx *fasthttp.RequestCtx) bool {
	switch s.state.Load() {
	case stateReady, stateDraining:
		return true
	case stateStarting:
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "not ready: replaying the write-ahead log")
	default:
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "shutting down")
	}
	return false
}

func (s *Server) queryReady(ctx *fasthttp.RequestCtx) bool {
	if !s.apiAuthorized(ctx) {
		return false
	}
	if s.state.Load() == stateStarting {
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "not ready: replaying the write-ahead log")
		return false
	}
	return true
}

// durable waits, under --fsync=always, until what this request changed is
// synced. It reports false (and answers 503) when the log cannot sync.
func (s *Server) durable(ctx *fasthttp.RequestCtx) bool {
	if s.store == nil || s.cfg.Persist.Fsync != persist.FsyncModeAlways {
		return true
	}
	wctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTPWriteTimeout)
	defer cancel()
	if err := s.store.WaitDurable(wctx); err != nil {
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "cannot sync the write-ahead log")
		return false
	}
	return true
}

func (s *Server) hHeartbeat(ctx *fasthttp.RequestCtx) {
	if !s.intakeOpen(ctx) {
		return
	}
	sc := scratchPool.Get().(*httpScratch)
	defer scratchPool.Put(sc)
	var user, room, tok, conn []byte
	if ctx.IsGet() {
		args := ctx.QueryArgs()
		user, room, tok, conn = args.Peek("user"), args.Peek("room"), args.Peek("token"), args.Peek("conn")
	} else {
		if err := sc.p.Heartbeat(ctx.PostBody(), &sc.hb); err != nil {
			s.met.count(trHTTP, outBadRequest)
			jsonError(ctx, fasthttp.StatusBadRequest, bodyError(err, "body must be a JSON object {\"user\",\"room\",\"token\"}"))
			return
		}
		if sc.hb.FieldErr != "" {
			s.met.count(trHTTP, outBadRequest)
			jsonError(ctx, fasthttp.StatusBadRequest, sc.hb.FieldErr)
			return
		}
		user, room, tok, conn = sc.hb.User, sc.hb.Room, sc.hb.Token, sc.hb.Conn
	}
	sop, msg := s.stateOp(sc.hb.HasState && !ctx.IsGet(), sc.hb.State)
	if msg != "" {
		s.met.count(trHTTP, outBadRequest)
		jsonError(ctx, fasthttp.StatusBadRequest, msg)
		return
	}
	now, mono := s.clk.Now()
	if !s.src.allowAddr(s.httpClientIP(ctx), 1, mono) {
		s.met.count(trHTTP, outRateLimited)
		outcomeError(ctx, outRateLimited)
		return
	}
	if o := s.heartbeatState(trHTTP, user, room, conn, tok, now, sop); o != outOK {
		outcomeError(ctx, o)
		return
	}
	if s.durable(ctx) {
		jsonBody(ctx, fasthttp.StatusOK, s.heartbeatReply())
	}
}

func (s *Server) hHeartbeats(ctx *fasthttp.RequestCtx) {
	if !s.intakeOpen(ctx) {
		return
	}
	sc := scratchPool.Get().(*httpScratch)
	defer scratchPool.Put(sc)
	maxBatch := int(s.rl.maxBatch.Load())
	items, err := sc.p.Batch(ctx.PostBody(), sc.items, maxBatch)
	sc.items = items
	switch {
	case errors.Is(err, jsonbody.ErrTooMany):
		jsonError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("batch exceeds max-batch (%d heartbeats)", maxBatch))
		return
	case errors.Is(err, jsonbody.ErrMissingHeartbeats):
		jsonError(ctx, fasthttp.StatusBadRequest, `body must be {"heartbeats":[...]}`)
		return
	case err != nil:
		jsonError(ctx, fasthttp.StatusBadRequest, bodyError(err, `body must be JSON {"heartbeats":[{"user","room","token"},...]}`))
		return
	}
	now, mono := s.clk.Now()
	if !s.src.allowAddr(s.httpClientIP(ctx), int64(max(len(items), 1)), mono) {
		s.met.heartbeats[trHTTP][outRateLimited].Add(uint64(len(items)))
		outcomeError(ctx, outRateLimited)
		return
	}
	out := append(sc.out[:0], `{"accepted":`...)
	accepted := 0
	var rejected []byte
	for i := range items {
		it := &items[i]
		var msg string
		sop, stateMsg := s.stateOp(it.HasState, it.State)
		if it.FieldErr == "" && stateMsg != "" {
			it.FieldErr = stateMsg
		}
		if it.FieldErr != "" {
			s.met.count(trHTTP, outBadRequest)
			msg = it.FieldErr
		} else if o := s.heartbeatState(trHTTP, it.User, it.Room, it.Conn, it.Token, now, sop); o != outOK {
			msg = outcomeInfo[o].msg
		} else {
			accepted++
			continue
		}
		if len(rejected) > 0 {
			rejected = append(rejected, ',')
		}
		rejected = append(rejected, `{"index":`...)
		rejected = strconv.AppendInt(rejected, int64(i), 10)
		rejected = append(rejected, `,"error":`...)
		rejected = appendJSONString(rejected, msg)
		rejected = append(rejected, '}')
	}
	clear(items)
	out = strconv.AppendInt(out, int64(accepted), 10)
	out = append(out, `,"rejected":[`...)
	out = append(out, rejected...)
	iv, ttl := s.timing()
	out = strconv.AppendInt(append(out, `],"interval_ms":`...), iv, 10)
	out = append(strconv.AppendInt(append(out, `,"ttl_ms":`...), ttl, 10), '}')
	sc.out = out
	if accepted == 0 || s.durable(ctx) {
		jsonBody(ctx, fasthttp.StatusOK, out)
	}
}

func (s *Server) hLeave(ctx *fasthttp.RequestCtx) {
	if !s.intakeOpen(ctx) {
		return
	}
	sc := scratchPool.Get().(*httpScratch)
	defer scratchPool.Put(sc)
	if err := sc.p.Heartbeat(ctx.PostBody(), &sc.hb); err != nil {
		s.met.countLeave(trHTTP, outBadRequest)
		jsonError(ctx, fasthttp.StatusBadRequest, bodyError(err, "body must be a JSON object {\"user\",\"room\",\"token\"}"))
		return
	}
	if sc.hb.FieldErr != "" {
		s.met.countLeave(trHTTP, outBadRequest)
		jsonError(ctx, fasthttp.StatusBadRequest, sc.hb.FieldErr)
		return
	}
	now, mono := s.clk.Now()
	if !s.src.allowAddr(s.httpClientIP(ctx), 1, mono) {
		s.met.countLeave(trHTTP, outRateLimited)
		outcomeError(ctx, outRateLimited)
		return
	}
	n, o := s.leave(trHTTP, sc.hb.User, sc.hb.Room, sc.hb.Conn, sc.hb.Token, now)
	if o != outOK {
		outcomeError(ctx, o)
		return
	}
	if n == 0 || s.durable(ctx) {
		jsonBody(ctx, fasthttp.StatusOK, fmt.Appendf(nil, `{"left":%d}`, n))
	}
}

// tooDeep is the answer for a body, or a WebSocket state, nested past
// jsonbody.MaxDepth.
var tooDeep = fmt.Sprintf("a field (state or another) nests deeper than the depth limit (%d levels of objects and arrays)", jsonbody.MaxDepth)

// bodyError is the answer for a heartbeat body the parser refused: the
// depth limit when that is what it hit, generic otherwise.
func bodyError(err error, generic string) string {
	if errors.Is(err, jsonbody.ErrTooDeep) {
		return tooDeep
	}
	return generic
}

// pathID unescapes and validates an id taken from the path.
func pathID(ctx *fasthttp.RequestCtx, raw []byte, field string) ([]byte, bool) {
	s, err := url.PathUnescape(string(raw))
	if err != nil || !wire.ValidID([]byte(s), false) {
		jsonError(ctx, fasthttp.StatusBadRequest, field+" must be a URL-encoded id of 1 to 128 bytes of UTF-8 without control characters")
		return nil, false
	}
	return []byte(s), true
}

// intArg reads an optional integer query argument within [min, max].
func intArg(ctx *fasthttp.RequestCtx, name string, def, min, max int) (int, bool) {
	v := ctx.QueryArgs().Peek(name)
	if len(v) == 0 {
		return def, true
	}
	n, err := strconv.Atoi(string(v))
	if err != nil || n < min || n > max {
		jsonError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("%s must be an integer from %d to %d", name, min, max))
		return 0, false
	}
	return n, true
}

func (s *Server) hReady(ctx *fasthttp.RequestCtx) {
	switch st := s.state.Load(); {
	case st == stateStarting:
		// The log's replay says how far it got (sessions restored so far).
		jsonBody(ctx, fasthttp.StatusServiceUnavailable, fmt.Appendf(nil, `{"status":"starting","error":"starting: replaying the write-ahead log","replayed":%d}`, s.replayed.Load()))
	case st != stateReady:
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "draining: shutting down")
	case s.store != nil && s.store.Healthy() != nil:
		// The state (failing, unavailable, corrupt) is also the metric
		// presenced_wal_state; the error says why.
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "write-ahead log "+s.store.State().String()+": "+s.store.Healthy().Error())
	case s.store != nil && s.store.Damage().LostCommits > 0:
		// Ready, but say loudly that the log lost acknowledged changes.
		b := append([]byte(`{"status":"ready","warning":`), appendJSONString(nil, "write-ahead log damaged at start: "+s.store.Damage().String())...)
		jsonBody(ctx, fasthttp.StatusOK, append(b, '}'))
	default:
		jsonBody(ctx, fasthttp.StatusOK, []byte(`{"status":"ready"}`))
	}
}
