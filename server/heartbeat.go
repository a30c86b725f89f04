package server

import (
	"time"

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
	o := s.checkItem(user, room, tok, nowMs)
	if o == outOK {
		joined, prev, err := s.m.TouchSeen(user, room, nowMs, s.ttlMs)
		o = mapOutcome(err)
		if err == nil && !joined {
			s.met.lateness.ObserveDuration(time.Duration(max(nowMs-prev-s.intervalMs, 0)) * time.Millisecond)
		}
		if joined {
			s.publish(shardmap.Event{User: string(user), Room: string(room), At: nowMs, Join: true})
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
		if !s.m.Leave(user, room, nowMs) {
			return 0, o
		}
		s.publish(shardmap.Event{User: string(user), Room: string(room), At: nowMs, Reason: shardmap.ReasonLeft})
		return 1, o
	}
	evs := s.m.LeaveAll(user, nowMs, nil)
	for i := range evs {
		s.publish(evs[i])
	}
	return len(evs), o
}
