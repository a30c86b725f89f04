package server

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/internal/events"
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
		s.streamIPs.refused[streamLimitTotal].Add(1)
		jsonError(ctx, fasthttp.StatusTooManyRequests, fmt.Sprintf("too many event streams (max-event-streams %d)", s.cfg.MaxEventStreams))
		return
	}
	ip := s.httpClientIP(ctx)
	if !s.streamIPs.take(ip, s.cfg.MaxEventStreamsPerIP) {
		s.streams.Add(-1)
		s.streamIPs.refused[streamLimitPerIP].Add(1)
		jsonError(ctx, fasthttp.StatusTooManyRequests, fmt.Sprintf("too many event streams from this address (max-event-streams-per-ip %d)", s.cfg.MaxEventStreamsPerIP))
		return
	}
	sub := s.bus.Subscribe(room, all, since)
	if sub == nil {
		s.streams.Add(-1)
		s.streamIPs.release(ip)
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
	// The connection is closed after the stream, so that gone's reader
	// (below) is the only one reading it.
	ctx.SetConnectionClose()
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.streams.Add(-1)
		defer s.streamIPs.release(ip)
		defer s.bus.Unsubscribe(sub)
		flush := func() bool {
			if writeTimeout > 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			}
			return w.Flush() == nil
		}
		wake, gone, stop := streamWake(conn)
		defer stop()
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
			evs, err = s.bus.Next(sub, evs[:0], maxStreamBatch, wake)
			if gone() {
				return
			}
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

// streamWake returns what wakes a stream's Next: a tick every
// keepAliveInterval, and the channel closed once the client has closed the
// connection (a read on it fails: a stream client sends nothing), so that
// the stream ends and frees its slot at once rather than at the next write
// that fails. gone reports the latter. stop ends the ticker; the reader
// ends when the connection closes (after the stream: Connection: close).
func streamWake(conn net.Conn) (wake <-chan time.Time, gone func() bool, stop func()) {
	closed := make(chan struct{})
	quit := make(chan struct{})
	ch := make(chan time.Time, 1)
	_ = conn.SetReadDeadline(time.Time{})
	go func() {
		defer close(closed)
		var b [256]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				return
			}
		}
	}()
	go func() {
		t := time.NewTicker(keepAliveInterval)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				select {
				case ch <- now:
				default:
				}
			case <-closed:
				close(ch)
				return
			case <-quit:
				return
			}
		}
	}()
	gone = func() bool {
		select {
		case <-closed:
			return true
		default:
			return false
		}
	}
	return ch, gone, func() { close(quit) }
}

// Which limit refused a stream, in presenced_event_streams_refused_total.
const (
	streamLimitTotal = iota
	streamLimitPerIP
	numStreamLimits
)

var streamLimitLabel = [numStreamLimits]string{"max_event_streams", "max_event_streams_per_ip"}

// streamsPerIP counts the open event streams of each client address
// (--max-event-streams-per-ip). The zero value is ready to use.
type streamsPerIP struct {
	mu struct {
		sync.Mutex
		n map[netip.Addr]int
	}
	refused [numStreamLimits]atomic.Uint64
}

// take counts one more stream from ip unless it holds max already (0: no
// per-address limit).
func (p *streamsPerIP) take(ip netip.Addr, max int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if max > 0 && p.mu.n[ip] >= max {
		return false
	}
	if p.mu.n == nil {
		p.mu.n = map[netip.Addr]int{}
	}
	p.mu.n[ip]++
	return true
}

func (p *streamsPerIP) release(ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.n[ip] <= 1 {
		delete(p.mu.n, ip)
		return
	}
	p.mu.n[ip]--
}
