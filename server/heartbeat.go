package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/presenced/presenced/server/events"
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

// heartbeat applies one heartbeat. A refresh of a live session allocates
// nothing; a join allocates its event.
func (s *Server) heartbeat(tr transport, user, room, tok []byte, nowMs int64) outcome {
	return s.heartbeatState(tr, user, room, tok, nowMs, shardmap.StateOp{})
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

// heartbeatState is heartbeat that also sets or clears the session's state
// (sop.Set; the state already checked by stateOp). A join carries the
// state; a change of a live session's state is an update event.
func (s *Server) heartbeatState(tr transport, user, room, tok []byte, nowMs int64, sop shardmap.StateOp) outcome {
	o := s.checkItem(user, room, tok, nowMs)
	if o == outOK {
		r, err := s.m.TouchState(user, room, nowMs, s.ttlMs, sop)
		o = mapOutcome(err)
		if err == nil && !r.Joined {
			s.met.lateness.ObserveDuration(time.Duration(max(nowMs-r.PrevSeen-s.intervalMs, 0)) * time.Millisecond)
		}
		switch {
		case r.Joined:
			if r.Occupied {
				s.publishRoom(events.Occupied, room, nowMs)
			}
			s.publishState(events.Join, user, room, nowMs, sop.State)
		case r.Changed:
			s.publishState(events.Update, user, room, nowMs, sop.State)
		}
	}
	s.met.count(tr, o)
	return o
}

// leave ends the user's session in room, or all their sessions when room is
// empty, and returns how many ended.
func (s *Server) leave(tr transport, user, room, tok []byte, nowMs int64) (int, outcome) {
	o := s.checkItem(user, room, tok, nowMs)
	s.met.countLeave(tr, o)
	if o != outOK {
		return 0, o
	}
	s.clusterLeave(user, room, nowMs)
	if len(room) > 0 {
		if s.departed != nil {
			if _, seen, online := s.m.User(user, nil); online {
				s.departed.note(string(user), seen)
			}
		}
		evs := s.m.LeaveOne(user, room, nowMs, nil)
		if len(evs) == 0 {
			return 0, o
		}
		s.publish(evs[0])
		return 1, o
	}
	evs := s.m.LeaveAll(user, nowMs, nil)
	s.departed.noteLeaves(evs)
	for i := range evs {
		s.publish(evs[i])
	}
	return len(evs), o
}
