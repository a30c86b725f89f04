package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/wire"
)

// udpDropReasons labels presenced_udp_dropped_datagrams_total: the codec's
// reasons, "bad_token" for a datagram none of whose items carried a
// genuine token (valid or expired), "rate_limited" for one over its
// source's --source-rate, the v2 reasons of checkV2 ("unauthenticated",
// "bad_mac", "stale", "replayed"), and "v1_refused" for a v1 datagram
// under --require-v2 (PROTOCOL.md's tables).
var udpDropReasons = append(wire.Reasons(), "bad_token", "unauthenticated", "rate_limited", "bad_mac", "stale", "replayed", "v1_refused")

func udpDropIndex(reason string) int {
	other := 0
	for i, r := range udpDropReasons {
		if r == reason {
			return i
		}
		if r == "other" {
			other = i
		}
	}
	return other
}

// wireStatus maps an outcome to the status byte of a UDP reply.
var wireStatus = [numOutcomes]wire.Status{
	outOK:           wire.StatusOK,
	outBadUser:      wire.StatusBadID,
	outBadRoom:      wire.StatusBadID,
	outMissingToken: wire.StatusBadToken,
	outBadToken:     wire.StatusBadToken,
	outExpiredToken: wire.StatusTokenExpired,
	outUnknownKey:   wire.StatusUnknownKey,
	outWrongRoom:    wire.StatusWrongRoom,
	outTooManyRooms: wire.StatusTooManyRooms,
	outRateLimited:  wire.StatusRateLimited,
	outUnavailable:  wire.StatusUnavailable,
	outBadRequest:   wire.StatusBadID,
	outBadConn:      wire.StatusBadID,
	outTooManyConns: wire.StatusTooManyConns,
}

// unverified reports whether o means the item's token was not shown to be
// genuine: missing, malformed, wrongly signed, of an unknown key, or
// room-bound without a room (checked before the signature). An expired
// token is genuine: its signature verified, so the sender held it.
func unverified(o outcome) bool {
	switch o {
	case outMissingToken, outBadToken, outUnknownKey, outWrongRoom:
		return true
	}
	return false
}

// maskOthers hides how other users' tokens fail (PROTOCOL.md,
// Acknowledgements): an unverified item whose user has no verified item in
// the datagram is reported as bad_token, whatever the reason, so a sender
// with one good token learns no more about other tokens than it would by
// sending each alone (a reply or silence).
func maskOthers(items []wire.Item, out []outcome, status []wire.Status) {
	for i := range items {
		if !unverified(out[i]) {
			continue
		}
		own := false
		for j := range items {
			if !unverified(out[j]) && bytes.Equal(items[j].User, items[i].User) {
				own = true
				break
			}
		}
		if !own {
			status[i] = wire.StatusBadToken
		}
	}
}

// udpServer is the gnet/v2 UDP listener: one event loop per CPU by default,
// each with its own SO_REUSEPORT socket, so the kernel spreads datagrams.
type udpServer struct {
	gnet.BuiltinEventEngine
	s      *Server
	addr   string
	eng    gnet.Engine
	booted chan struct{}
	done   chan error
	acks   *ackQueue // non-nil under --fsync=always
}

// udpScratch is one event loop's working memory, pooled so a datagram's
// decode, verify and touch allocate nothing.
type udpScratch struct {
	d      wire.Datagram
	status [wire.MaxItems]wire.Status
	out    [wire.MaxItems]outcome
	reply  []byte
}

var udpScratchPool = sync.Pool{New: func() any { return &udpScratch{reply: make([]byte, 0, wire.MaxDatagram)} }}

func (s *Server) startUDP() (*udpServer, error) {
	addr, err := resolveUDPAddr(s.cfg.UDPAddr)
	if err != nil {
		return nil, err
	}
	u := &udpServer{s: s, addr: addr, booted: make(chan struct{}), done: make(chan error, 1)}
	if s.store != nil && s.cfg.Persist.Fsync == persist.FsyncModeAlways {
		u.acks = newAckQueue(s.cfg.UDPMaxPendingAcks, s.store.WaitDurable, s.met.udpReplies, s.met.udpAcksDropped)
		s.routines.Go("udp acks", u.acks.loop)
	}
	loops := s.numLoops()
	s.routines.Go("udp", func() {
		u.done <- gnet.Run(u, "udp://"+addr,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(loops),
			gnet.WithReusePort(true),
			gnet.WithSocketRecvBuffer(s.cfg.UDPReadBuffer),
			gnet.WithLogger(gnetLogger{s.log.With("component", "gnet")}),
		)
	})
	select {
	case <-u.booted:
		p, _ := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
		s.drops.watch(p, loops)
		return u, nil
	case err := <-u.done:
		return nil, fmt.Errorf("cannot listen on --udp-addr %s: %w", addr, err)
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("cannot listen on --udp-addr %s: gnet did not boot in 10s", addr)
	}
}

// resolveUDPAddr picks a free port for port 0: with SO_REUSEPORT every event
// loop binds its own socket, and port 0 would give each a different port.
func resolveUDPAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("bad --udp-addr %q: %w", addr, err)
	}
	if port != "0" {
		return addr, nil
	}
	c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("cannot find a free UDP port on %s: %w", host, err)
	}
	p := c.LocalAddr().(*net.UDPAddr).Port
	_ = c.Close()
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

func (u *udpServer) OnBoot(eng gnet.Engine) gnet.Action {
	u.eng = eng
	close(u.booted)
	return gnet.None
}

// OnTraffic handles one datagram. gnet's buffer lives only for this call:
// nothing here keeps a reference to it (the map copies keys it inserts).
func (u *udpServer) OnTraffic(c gnet.Conn) gnet.Action {
	s := u.s
	s.met.udpIn.Inc()
	buf, _ := c.Next(-1)
	// The source pays for the datagram before it is even decoded, so a
	// flood from one address costs a hash and a CAS per datagram. A trusted
	// proxy (--trusted-proxies) carries many clients: charging it would let
	// one junk sender starve them all, so its datagrams are not charged;
	// their items still need genuine tokens, and each session is bound by
	// --heartbeat-min-gap.
	src := addrIP(c.RemoteAddr())
	charge := !s.proxies.contains(src)
	now, mono := s.clk.Now()
	if charge && !s.src.allowAddr(src, 1, mono) {
		s.met.udpDropped[udpDropIndex("rate_limited")].Inc()
		return gnet.None
	}
	sc := udpScratchPool.Get().(*udpScratch)
	defer udpScratchPool.Put(sc)
	if err := sc.d.Decode(buf); err != nil {
		s.met.udpDropped[udpDropIndex(wire.Reason(err))].Inc()
		return gnet.None
	}
	items := sc.d.Items()
	if charge && len(items) > 1 && !s.src.allowAddr(src, int64(len(items)-1), mono) {
		s.met.udpDropped[udpDropIndex("rate_limited")].Inc()
		return gnet.None
	}
	if sc.d.Version == wire.Version2 {
		if reason := s.checkV2(&sc.d, now); reason != "" {
			s.met.udpDropped[udpDropIndex(reason)].Inc()
			return gnet.None
		}
	} else if s.cfg.RequireV2 {
		s.met.udpDropped[udpDropIndex("v1_refused")].Inc()
		return gnet.None
	}
	verified, masked := 0, false
	if s.state.Load() == stateStarting {
		// Not taking heartbeats yet, but the no-reply rule for
		// unauthenticated datagrams holds while starting too.
		for i := range items {
			it := &items[i]
			sc.out[i] = s.checkItem(it.User, it.Room, it.Token, now)
			sc.status[i] = wire.StatusUnavailable
		}
	} else {
		for i := range items {
			it := &items[i]
			var o outcome
			if it.Op == wire.OpLeave {
				_, o = s.leave(trUDP, it.User, it.Room, it.Conn, it.Token, now)
			} else {
				o = s.heartbeat(trUDP, it.User, it.Room, it.Conn, it.Token, now)
			}
			sc.out[i] = o
			sc.status[i] = wireStatus[o]
		}
	}
	for i := range items {
		if unverified(sc.out[i]) {
			masked = true
		} else {
			verified++
		}
	}
	if verified == 0 {
		s.met.udpDropped[udpDropIndex("bad_token")].Inc()
		return gnet.None
	}
	if masked {
		maskOthers(items, sc.out[:len(items)], sc.status[:len(items)])
	}
	if !sc.d.Ack {
		return gnet.None
	}
	iv, ttl := s.timing()
	reply, err := wire.AppendReply(sc.reply[:0], &sc.d, sc.status[:len(items)], uint32(iv), uint32(ttl))
	sc.reply = reply[:0]
	if err != nil {
		return gnet.None
	}
	if u.acks != nil {
		u.acks.add(c, reply)
		return gnet.None
	}
	if _, err := c.Write(reply); err == nil {
		s.met.udpReplies.Inc()
	}
	return gnet.None
}

func (u *udpServer) stop(ctx context.Context) error {
	// The ack queue sends on gnet's sockets: stop it first.
	var ackErr error
	u.s.drops.forget() // gnet closes the sockets: their numbers may be reused
	if u.acks != nil {
		ackErr = u.acks.close(ctx)
	}
	err := errors.Join(ackErr, u.eng.Stop(ctx))
	select {
	case <-u.done:
	case <-ctx.Done():
	}
	return err
}

// gnetLogger routes gnet's logging into slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...)) }
