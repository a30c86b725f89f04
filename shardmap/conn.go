package shardmap

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// Connections.
//
// A session (user, room) is held by one or more connections (browser tabs,
// devices), each with its own last heartbeat, expiry and state. Most
// sessions only ever have the default connection (id ""), and for those the
// session record is all there is: its times are the connection's and its
// state sits in userState.states, so they cost nothing more than before
// connections existed.
//
// A session that has ever had a named connection gets a connSet in
// userState.conns, listing every connection, the default one included when
// it is live. Then:
//   - the session record's lastSeen and ttl are those of the connection that
//     expires first, so the timing wheel wakes Expire when that connection is
//     due (not only when the whole session is);
//   - the session's own last heartbeat and expiry, as queries, events and
//     sinks see them, are the latest over its connections (seenOf, untilOf);
//   - the member's state is that of its most recently heartbeated
//     connection (stateOf), so single-connection readers see what they saw;
//   - userState.states holds nothing for the session.
//
// When the last named connection ends and only the default one remains, the
// session goes back to the plain form.

// DefaultConn is the id of a session's default connection: the one a
// heartbeat that names no connection speaks for.
const DefaultConn = ""

// MaxConnIDLen is the longest connection id, in bytes.
const MaxConnIDLen = 64

// Conn is one connection of a session, as queries and events report it.
type Conn struct {
	ID               string
	LastSeen, Expiry int64
	// State is the connection's state (a copy), or nil.
	State []byte
}

// connRec is one live connection (32 bytes, no pointers), in the shard's
// connection table. Its id is in the shard's connection-id arena; its
// state, if any, in userState.connStates.
type connRec struct {
	lastSeen int64
	expiry   int64
	next     uint32 // next connection of the session, or next free record
	idOff    uint32 // the id in connArena
	idLen    uint8  // 0: the default connection (no id); connFree: a free record
	_        [3]byte
}

const connFree = 0xff

// connList is a session's connections: the first (in the order they
// started) and the most recently heartbeated. Values of userState.conns.
type connList struct{ head, recent uint32 }

func (st *userState) conn(c uint32) *connRec { return &st.connRecs[c>>chunkBits][c&chunkMask] }

func (st *userState) connID(c uint32) []byte {
	r := st.conn(c)
	if r.idLen == 0 {
		return nil
	}
	return st.connArena.bytes(r.idOff, r.idLen)
}

// newConn adds a connection record with id and no times, or returns 0 if
// the table is full.
func (st *userState) newConn(id []byte) uint32 {
	c := allocRec(&st.connRecs, &st.nConn, &st.freeConn, maxRecIdx, func(c uint32) uint32 { return st.conn(c).next })
	if c == 0 {
		return 0
	}
	r := st.conn(c)
	*r = connRec{idLen: uint8(len(id))}
	if len(id) > 0 {
		r.idOff = st.connArena.alloc(id)
	}
	return c
}

// freeConnRec releases record c, its id and its state.
func (st *userState) freeConnRec(c uint32) {
	r := st.conn(c)
	if r.idLen > 0 {
		st.connArena.release(r.idOff, r.idLen)
	}
	if st.connStates != nil {
		delete(st.connStates, c)
	}
	r.idLen = connFree
	r.next = st.freeConn
	st.freeConn = c
	if st.connArena.needsCompact() {
		live := st.scratch[:0]
		for k := uint32(1); k < st.nConn; k++ {
			if q := st.conn(k); q.idLen != connFree && q.idLen > 0 {
				live = append(live, uint64(q.idOff)<<32|uint64(k))
			}
		}
		slices.Sort(live)
		st.connArena.compact(live,
			func(k uint32) uint8 { return st.conn(k).idLen },
			func(k, off uint32) { st.conn(k).idOff = off })
		st.scratch = live[:0]
	}
}

func (st *userState) connState(c uint32) []byte {
	if st.connStates == nil {
		return nil
	}
	return st.connStates[c]
}

// setConnState applies op to connection c and reports whether it changed.
func (st *userState) setConnState(c uint32, op StateOp) bool {
	return applyState(&st.connStates, c, op)
}

// connsOf returns session i's connection list and whether it has one (a
// plain session has none).
func (st *userState) connsOf(i uint32) (connList, bool) {
	if st.conns == nil {
		return connList{}, false
	}
	l, ok := st.conns[i]
	return l, ok
}

func (st *userState) hasConns(i uint32) bool {
	_, ok := st.connsOf(i)
	return ok
}

// findConn returns the record of session i's connection id, or 0.
func (st *userState) findConn(l connList, id []byte) uint32 {
	for c := l.head; c != 0; c = st.conn(c).next {
		if string(st.connID(c)) == string(id) {
			return c
		}
	}
	return 0
}

func (st *userState) countConns(l connList) int {
	n := 0
	for c := l.head; c != 0; c = st.conn(c).next {
		n++
	}
	return n
}

func (st *userState) maxSeen(l connList) int64 {
	var v int64
	for c := l.head; c != 0; c = st.conn(c).next {
		v = max(v, st.conn(c).lastSeen)
	}
	return v
}

func (st *userState) maxExpiry(l connList) int64 {
	var v int64
	for c := l.head; c != 0; c = st.conn(c).next {
		v = max(v, st.conn(c).expiry)
	}
	return v
}

// addConn appends a connection to session i's list (after the others).
func (st *userState) addConn(i uint32, l connList, id []byte) (connList, uint32) {
	c := st.newConn(id)
	if c == 0 {
		return l, 0
	}
	if l.head == 0 {
		l.head = c
	} else {
		t := l.head
		for st.conn(t).next != 0 {
			t = st.conn(t).next
		}
		st.conn(t).next = c
	}
	st.conns[i] = l
	return l, c
}

// removeConn ends connection c of session i, which has others.
func (st *userState) removeConn(i uint32, l connList, c uint32) connList {
	if l.head == c {
		l.head = st.conn(c).next
	} else {
		p := l.head
		for st.conn(p).next != c {
			p = st.conn(p).next
		}
		st.conn(p).next = st.conn(c).next
	}
	st.freeConnRec(c)
	if l.recent == c {
		l.recent = l.head
		for k := l.head; k != 0; k = st.conn(k).next {
			if st.conn(k).lastSeen > st.conn(l.recent).lastSeen {
				l.recent = k
			}
		}
	}
	st.conns[i] = l
	return l
}

// dropConns frees every connection of session i (ending) and returns how
// many it had.
func (st *userState) dropConns(i uint32) int {
	l, ok := st.connsOf(i)
	if !ok {
		return 1
	}
	n := 0
	for c := l.head; c != 0; {
		next := st.conn(c).next
		st.freeConnRec(c)
		c = next
		n++
	}
	delete(st.conns, i)
	return n
}

// seenOf is session i's last heartbeat over all its connections.
func (st *userState) seenOf(i uint32) int64 {
	if l, ok := st.connsOf(i); ok {
		return st.maxSeen(l)
	}
	return st.session(i).lastSeen()
}

// untilOf is session i's expiry: that of its last connection to expire.
func (st *userState) untilOf(i uint32) int64 {
	if l, ok := st.connsOf(i); ok {
		return st.maxExpiry(l)
	}
	return st.session(i).expiry()
}

// connsSnapshot appends session i's connections to dst (copies); nothing
// for a plain session, whose one default connection is the session itself
// (its times and state).
func (st *userState) connsSnapshot(i uint32, dst []Conn) []Conn {
	l, ok := st.connsOf(i)
	if !ok {
		return dst
	}
	for c := l.head; c != 0; c = st.conn(c).next {
		r := st.conn(c)
		dst = append(dst, Conn{ID: string(st.connID(c)), LastSeen: r.lastSeen, Expiry: r.expiry, State: bytes.Clone(st.connState(c))})
	}
	return dst
}

// promote gives plain session i a connection list holding its default
// connection (with the session's times and state).
func (st *userState) promote(i uint32) (connList, bool) {
	c := st.newConn(nil)
	if c == 0 {
		return connList{}, false
	}
	s := st.session(i)
	r := st.conn(c)
	r.lastSeen, r.expiry = s.lastSeen(), s.expiry()
	if stt := st.stateOf(i); stt != nil {
		if st.connStates == nil {
			st.connStates = map[uint32][]byte{}
		}
		st.connStates[c] = stt
		delete(st.states, i)
	}
	if st.conns == nil {
		st.conns = map[uint32]connList{}
	}
	l := connList{head: c, recent: c}
	st.conns[i] = l
	return l, true
}

// settle puts session i's record times on its first-expiring connection
// (moving it in the wheel), or turns the session back into a plain one when
// only the default connection is left.
func (st *userState) settle(i uint32, l connList) {
	s := st.session(i)
	st.unlinkWheel(i)
	if r := st.conn(l.head); r.next == 0 && r.idLen == 0 {
		s.setTimes(r.lastSeen, r.expiry-r.lastSeen)
		if stt := st.connState(l.head); stt != nil {
			if st.states == nil {
				st.states = map[uint32][]byte{}
			}
			st.states[i] = stt
			delete(st.connStates, l.head)
		}
		st.freeConnRec(l.head)
		delete(st.conns, i)
	} else {
		f := st.conn(l.head)
		for c := f.next; c != 0; c = st.conn(c).next {
			if st.conn(c).expiry < f.expiry {
				f = st.conn(c)
			}
		}
		s.setTimes(f.lastSeen, f.expiry-f.lastSeen)
	}
	st.linkWheel(i)
}

// The durable form of a connSet (Change.Conns, RestoreState): a session's
// state field holds either a JSON object (a plain session, or nothing) or,
// for a session with named connections, this binary form, which starts with
// a byte no JSON text starts with:
//
//	0x00 | count (1) | count x ( idLen (1) | id | lastSeen (8) | expiry (8) |
//	                             stateLen (uvarint) | state )
//
// Integers are big-endian, times unix ms.
const connsMagic = 0x00

// IsConns reports whether a stored state is the durable form of connections.
func IsConns(b []byte) bool { return len(b) > 0 && b[0] == connsMagic }

// appendDurable appends the durable form of session i's connections.
func (st *userState) appendDurable(l connList, dst []byte) []byte {
	dst = append(dst, connsMagic, byte(st.countConns(l)))
	for c := l.head; c != 0; c = st.conn(c).next {
		r, id, stt := st.conn(c), st.connID(c), st.connState(c)
		dst = append(dst, byte(len(id)))
		dst = append(dst, id...)
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.lastSeen))
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.expiry))
		dst = binary.AppendUvarint(dst, uint64(len(stt)))
		dst = append(dst, stt...)
	}
	return dst
}

// DecodeConns parses the durable form of connections (see IsConns).
func DecodeConns(b []byte) ([]Conn, bool) {
	if !IsConns(b) || len(b) < 2 {
		return nil, false
	}
	n := int(b[1])
	b = b[2:]
	out := make([]Conn, 0, n)
	for range n {
		if len(b) < 1 {
			return nil, false
		}
		l := int(b[0])
		if l > MaxConnIDLen || len(b) < 1+l+16 {
			return nil, false
		}
		c := Conn{ID: string(b[1 : 1+l])}
		b = b[1+l:]
		c.LastSeen = int64(binary.BigEndian.Uint64(b))
		c.Expiry = int64(binary.BigEndian.Uint64(b[8:]))
		b = b[16:]
		sl, w := binary.Uvarint(b)
		if w <= 0 || uint64(len(b)-w) < sl {
			return nil, false
		}
		if sl > 0 {
			c.State = bytes.Clone(b[w : w+int(sl)])
		}
		b = b[w+int(sl):]
		out = append(out, c)
	}
	if len(b) != 0 {
		return nil, false
	}
	return out, true
}

// expireConnsLocked ends the connections of session i that are due at now
// while others stay, appending an update event for each to dst, and moves
// the session in the wheel to its next due connection.
func (m *Map) expireConnsLocked(st *userState, i uint32, l connList, now int64, dst []Event) []Event {
	var room []byte
	for c := l.head; c != 0; {
		next := st.conn(c).next
		if st.conn(c).expiry <= now {
			id := string(st.connID(c))
			l = st.removeConn(i, l, c)
			m.extraConns.Add(-1)
			if room == nil {
				room = m.roomName(st.session(i).room)
			}
			dst = append(dst, st.connEvent(i, l, room, id, ReasonTimeout, now))
		}
		c = next
	}
	st.session(i).logged = 0
	st.settle(i, l)
	if m.track {
		st.logUpsert(i)
	}
	return dst
}

// connEvent is the update event for connection id of session i ending
// while the session stays.
func (st *userState) connEvent(i uint32, l connList, room []byte, id string, reason Reason, now int64) Event {
	return Event{
		User: string(st.userID(st.session(i).user)), Room: string(room), At: now,
		Update: true, Reason: reason, Conn: id, LastSeen: st.maxSeen(l),
		State: bytes.Clone(st.connState(l.recent)), Conns: st.connsSnapshot(i, nil),
	}
}

// roomName returns the id of the room a session ref names (empty for 0).
func (m *Map) roomName(ref uint32) []byte {
	if ref == 0 {
		return []byte{}
	}
	rs, ri := m.roomOf(ref)
	rs.mu.Lock()
	name := bytes.Clone(rs.mu.name(ri))
	rs.mu.Unlock()
	return name
}

// LeaveConn ends connection conn of the session (user, room), or of every
// session of the user when room is empty, with reason. Where it was the
// session's last connection the session ends (a leave event in dst);
// otherwise the session stays and dst gets an update event. An empty conn
// ends the sessions whole (LeaveOneReason, or LeaveAll for an empty room).
// It returns dst and how many connections ended.
func (m *Map) LeaveConn(user, room, conn []byte, now int64, reason Reason, dst []Event) ([]Event, int) {
	if len(conn) == 0 {
		n := len(dst)
		if len(room) == 0 {
			dst = m.leaveAllReason(user, now, reason, dst)
		} else {
			dst, _ = m.leaveOne(user, room, now, reason, true, dst)
		}
		return dst, len(dst) - n
	}
	if len(user) == 0 || len(user) > MaxIDLen || len(room) > MaxIDLen || len(conn) > MaxConnIDLen {
		return dst, 0
	}
	h := m.hash(user)
	sh := &m.shards[h&m.shardMask]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := &sh.mu.userState
	ui := st.findUser(h, user)
	if ui == 0 {
		return dst, 0
	}
	var ref uint32
	if len(room) > 0 {
		if ref = m.lookupRoom(room); ref == 0 {
			return dst, 0
		}
	}
	ended := 0
	for i := st.user(ui).head; i != 0; {
		s := st.session(i)
		next := s.next
		if len(room) > 0 && s.room != ref {
			i = next
			continue
		}
		if l, ok := st.connsOf(i); ok {
			if c := st.findConn(l, conn); c != 0 {
				ended++
				if l.head == c && st.conn(c).next == 0 {
					dst = m.endSession(st, i, reason, now, true, dst)
				} else {
					l = st.removeConn(i, l, c)
					m.extraConns.Add(-1)
					dst = append(dst, st.connEvent(i, l, m.roomName(s.room), string(conn), reason, now))
					s.logged = 0
					st.settle(i, l)
					if m.track {
						st.logUpsert(i)
					}
				}
			}
		}
		if st.user(ui).key == 0 || len(room) > 0 {
			break // the user's last session ended, or the one room is done
		}
		i = next
	}
	return dst, ended
}
