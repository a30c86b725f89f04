package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/wire"
	"github.com/presenced/presenced/shardmap"
)

// transport labels the two intake paths in metrics.
type transport uint8

const (
	trUDP transport = iota
	trHTTP
	trWS
	numTransports
)

var transportLabel = [numTransports]string{"udp", "http", "ws"}

// checkItem validates ids and the token of one heartbeat or leave. It does
// not allocate. nowMs is unix milliseconds.
func (s *Server) checkItem(user, room, tok []byte, nowMs int64) outcome {
	if !wire.ValidID(user, false) {
		return outBadUser
	}
	if !wire.ValidID(room, true) {
		return outBadRoom
	}
	if kr := s.keys.Load(); kr != nil {
		if len(tok) == 0 {
			return outMissingToken
		}
		if err := kr.Verify(tok, user, room, nowMs/1000); err != nil {
			return tokenOutcome(err)
		}
	}
	return outOK
}

// heartbeat applies one heartbeat for connection conn (nil: the session's
// default connection). A refresh of a live session allocates nothing; a
// join allocates its event.
func (s *Server) heartbeat(tr transport, user, room, conn, tok []byte, nowMs int64) outcome {
	return s.heartbeatState(tr, user, room, conn, tok, nowMs, shardmap.StateOp{})
}

// validConn reports whether conn is a connection id the server takes: empty
// (the default connection) or 1 to 64 bytes under the id rules.
func validConn(conn []byte) bool {
	return len(conn) <= shardmap.MaxConnIDLen && wire.ValidID(conn, true)
}

// stateNotUTF8 is the answer for a state holding bytes that are not UTF-8.
const stateNotUTF8 = "state must be valid UTF-8: a string in it holds a byte that is not"

// stateOp turns a heartbeat's "state" field into a table operation: the
// object compacted (so formatting alone is no change), or a clear for
// null. It returns a message naming the limit when the state is too large.
func (s *Server) stateOp(has bool, raw []byte) (shardmap.StateOp, string) {
	if !has {
		return shardmap.StateOp{}, ""
	}
	if raw == nil {
		return shardmap.StateOp{Set: true}, ""
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return shardmap.StateOp{}, "state must be a JSON object or null"
	}
	if !utf8.Valid(b.Bytes()) {
		// Refused as an id is: one such byte in an event's text frame
		// makes a browser drop the socket.
		return shardmap.StateOp{}, stateNotUTF8
	}
	if b.Len() > s.cfg.MaxStateBytes {
		return shardmap.StateOp{}, fmt.Sprintf("state exceeds max-state-bytes (%d bytes serialized)", s.cfg.MaxStateBytes)
	}
	return shardmap.StateOp{Set: true, State: b.Bytes()}, ""
}

// heartbeatState is heartbeat that also sets or clears the connection's
// state (sop.Set; the state already checked by stateOp). A join carries the
// state; a connection starting in a live session, or a change of a
// connection's state, is an update event.
func (s *Server) heartbeatState(tr transport, user, room, conn, tok []byte, nowMs int64, sop shardmap.StateOp) outcome {
	o := s.checkItem(user, room, tok, nowMs)
	if o == outOK && !validConn(conn) {
		o = outBadConn
	}
	if o == outOK {
		r, err := s.m.TouchConn(user, room, conn, nowMs, s.ttlMs, sop)
		o = mapOutcome(err)
		if err == nil && !r.Joined && !r.ConnStarted {
			s.met.lateness.ObserveDuration(time.Duration(max(nowMs-r.PrevSeen-s.intervalMs, 0)) * time.Millisecond)
		}
		switch {
		case r.Joined:
			if r.Occupied {
				s.publishRoom(events.Occupied, room, nowMs)
			}
			s.publishConn(events.Join, user, room, conn, nowMs, sop.State, nil, events.ConnStarted)
		case r.Conns != nil:
			kind := events.ConnChanged
			if r.ConnStarted {
				kind = events.ConnStarted
			}
			s.publishConn(events.Update, user, room, conn, nowMs, r.State, r.Conns, kind)
		case r.Changed:
			s.publishConn(events.Update, user, room, conn, nowMs, sop.State, nil, events.ConnChanged)
		}
	}
	s.met.count(tr, o)
	return o
}

// leave ends connection conn (nil: all of them) of the user's session in
// room, or of all their sessions when room is empty, and returns how many
// sessions or connections ended.
func (s *Server) leave(tr transport, user, room, conn, tok []byte, nowMs int64) (int, outcome) {
	o := s.checkItem(user, room, tok, nowMs)
	if o == outOK && !validConn(conn) {
		o = outBadConn
	}
	s.met.countLeave(tr, o)
	if o != outOK {
		return 0, o
	}
	return s.endConns(user, room, conn, nowMs, shardmap.ReasonLeft, true), o
}

// endConns ends connection conn (empty: all of them) of the user's session
// in room, publishes the events and applies the leaves to the cluster. An
// empty room with allRooms means every session of the user (an explicit
// leave without a room); without it, the room-less session alone (a closed
// WebSocket that heartbeated it). It returns how many sessions or
// connections ended. The caller checked the ids and token.
func (s *Server) endConns(user, room, conn []byte, nowMs int64, reason shardmap.Reason, allRooms bool) int {
	if s.departed != nil {
		if _, seen, online := s.m.User(user, nil); online {
			s.departed.note(string(user), seen)
		}
	}
	all := allRooms && len(room) == 0
	if len(conn) == 0 {
		s.clusterLeave(user, room, all, nowMs, reason)
	}
	var evs []shardmap.Event
	var n int
	if len(conn) == 0 && len(room) == 0 && !all {
		evs = s.m.LeaveOneReason(user, nil, nowMs, reason, nil)
		n = len(evs)
	} else {
		evs, n = s.m.LeaveConn(user, room, conn, nowMs, reason, nil)
	}
	for i := range evs {
		if len(conn) > 0 && !evs[i].Update {
			// The session's last connection here ended it.
			s.clusterLeave(user, []byte(evs[i].Room), false, nowMs, reason)
		}
		s.publish(evs[i])
	}
	return n
}
