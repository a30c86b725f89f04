package server

import (
	"bufio"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/events"
	"github.com/presenced/presenced/server/wire"
)

const (
	// eventBuffer is each stream subscriber's live queue; a subscriber that
	// fills it re-reads from the history (events.Bus).
	eventBuffer = 1024
	// keepAliveInterval is how often an idle stream gets a comment line, so
	// proxies do not cut it (README "Events"; the contract allows at most 15 s).
	keepAliveInterval = 10 * time.Second
	// maxStreamBatch is how many events one write carries at most.
	maxStreamBatch = 256
)

// sinceParam returns the resume point of a stream request: the
// Last-Event-ID header, else ?since=. ok is false when one is given but is
// not an event id.
func sinceParam(ctx *fasthttp.RequestCtx) (since *events.ID, ok bool) {
	v := ctx.Request.Header.Peek("Last-Event-ID")
	if len(v) == 0 {
		v = ctx.QueryArgs().Peek("since")
	}
	if len(v) == 0 {
		return nil, true
	}
	id, ok := events.ParseID(string(v))
	if !ok {
		return nil, false
	}
	return &id, true
}

// hEvents streams events as server-sent events for as long as the client
// reads: each write gets its own deadline (--http-write-timeout) instead of
// fasthttp's one deadline for the whole response.
func (s *Server) hEvents(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	room, all := "", !args.Has("room")
	if !all {
		r := args.Peek("room")
		if !wire.ValidID(r, true) {
			jsonError(ctx, fasthttp.StatusBadRequest, "room must be at most 128 bytes of UTF-8 without control characters")
			return
		}
		room = string(r)
	}
	since, ok := sinceParam(ctx)
	if !ok {
		jsonError(ctx, fasthttp.StatusBadRequest, "Last-Event-ID or since must be an event id (<ms>-<seq>)")
		return
	}
	if n := s.streams.Add(1); n > int64(s.cfg.MaxEventStreams) {
		s.streams.Add(-1)
		jsonError(ctx, fasthttp.StatusTooManyRequests, fmt.Sprintf("too many event streams (max-event-streams %d)", s.cfg.MaxEventStreams))
		return
	}
	sub := s.bus.Subscribe(room, all, since)
	if sub == nil {
		s.streams.Add(-1)
		jsonError(ctx, fasthttp.StatusServiceUnavailable, "shutting down")
		return
	}
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	// The handler owns the write deadline from here on; fasthttp then does
	// not set its whole-response one (server.go: handlerWriteDeadlineSet).
	// The stream writer below runs on its own goroutine and may outlive the
	// request (fasthttp reuses ctx once the client is gone), so it sets
	// deadlines on the connection itself, never through ctx.
	_ = ctx.SetWriteDeadline(time.Time{})
	conn := ctx.Conn()
	writeTimeout := s.cfg.HTTPWriteTimeout
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.streams.Add(-1)
		defer s.bus.Unsubscribe(sub)
		flush := func() bool {
			if writeTimeout > 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			}
			return w.Flush() == nil
		}
		ping := time.NewTicker(keepAliveInterval)
		defer ping.Stop()
		_, _ = w.WriteString(": presenced event stream\n\n")
		if !flush() {
			return
		}
		var (
			evs []*events.Event
			b   []byte
			err error
		)
		for {
			evs, err = s.bus.Next(sub, evs[:0], maxStreamBatch, ping.C)
			if len(evs) == 0 && err == nil {
				_, _ = w.WriteString(": ping\n\n")
			}
			b = b[:0]
			for _, ev := range evs {
				b = ev.AppendSSE(b)
			}
			clear(evs)
			if len(b) > 0 {
				_, _ = w.Write(b)
			}
			if !flush() || err != nil {
				return
			}
		}
	})
}
