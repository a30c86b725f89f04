package shardmap

import (
	"bytes"
	"encoding/binary"
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

// connEntry is one live connection of a connSet.
type connEntry struct {
	id       string
	lastSeen int64
	expiry   int64
	state    []byte
}

// connSet is the connections of one session, in the order they started.
type connSet struct {
	list   []connEntry
	recent int // index of the most recently heartbeated connection
}

func (cs *connSet) find(id []byte) int {
	for k := range cs.list {
		if cs.list[k].id == string(id) {
			return k
		}
	}
	return -1
}

func (cs *connSet) maxSeen() int64 {
	var v int64
	for k := range cs.list {
		v = max(v, cs.list[k].lastSeen)
	}
	return v
}

func (cs *connSet) maxExpiry() int64 {
	var v int64
	for k := range cs.list {
		v = max(v, cs.list[k].expiry)
	}
	return v
}

// first returns the connection that expires first.
func (cs *connSet) first() *connEntry {
	f := &cs.list[0]
	for k := 1; k < len(cs.list); k++ {
		if cs.list[k].expiry < f.expiry {
			f = &cs.list[k]
		}
	}
	return f
}

func (cs *connSet) remove(k int) {
	cs.list = append(cs.list[:k], cs.list[k+1:]...)
	switch {
	case cs.recent == k:
		cs.recent = 0
		for j := range cs.list {
			if cs.list[j].lastSeen > cs.list[cs.recent].lastSeen {
				cs.recent = j
			}
		}
	case cs.recent > k:
		cs.recent--
	}
}

// snapshot appends the connections to dst (copies).
func (cs *connSet) snapshot(dst []Conn) []Conn {
	for k := range cs.list {
		e := &cs.list[k]
		dst = append(dst, Conn{ID: e.id, LastSeen: e.lastSeen, Expiry: e.expiry, State: bytes.Clone(e.state)})
	}
	return dst
}

// connsOf returns session i's connSet, or nil for a plain session.
func (st *userState) connsOf(i uint32) *connSet {
	if st.conns == nil {
		return nil
	}
	return st.conns[i]
}

// seenOf is session i's last heartbeat over all its connections.
func (st *userState) seenOf(i uint32) int64 {
	if cs := st.connsOf(i); cs != nil {
		return cs.maxSeen()
	}
	return st.session(i).lastSeen()
}

// untilOf is session i's expiry: that of its last connection to expire.
func (st *userState) untilOf(i uint32) int64 {
	if cs := st.connsOf(i); cs != nil {
		return cs.maxExpiry()
	}
	return st.session(i).expiry()
}

// connsSnapshot appends session i's connections to dst: the connSet's, or
// the default connection of a plain session.
func (st *userState) connsSnapshot(i uint32, dst []Conn) []Conn {
	if cs := st.connsOf(i); cs != nil {
		return cs.snapshot(dst)
	}
	s := st.session(i)
	return append(dst, Conn{ID: DefaultConn, LastSeen: s.lastSeen(), Expiry: s.expiry(), State: bytes.Clone(st.stateOf(i))})
}

// nConns is the number of session i's connections.
func (st *userState) nConns(i uint32) int {
	if cs := st.connsOf(i); cs != nil {
		return len(cs.list)
	}
	return 1
}

// promote turns plain session i into one with a connSet holding its default
// connection.
func (st *userState) promote(i uint32) *connSet {
	s := st.session(i)
	cs := &connSet{list: make([]connEntry, 1, 2)}
	cs.list[0] = connEntry{id: DefaultConn, lastSeen: s.lastSeen(), expiry: s.expiry(), state: st.stateOf(i)}
	if st.states != nil {
		delete(st.states, i)
	}
	if st.conns == nil {
		st.conns = map[uint32]*connSet{}
	}
	st.conns[i] = cs
	return cs
}

// settle puts session i's record times on its first-expiring connection
// (moving it in the wheel), or turns the session back into a plain one when
// only the default connection is left.
func (st *userState) settle(i uint32, cs *connSet) {
	s := st.session(i)
	st.unlinkWheel(i)
	if len(cs.list) == 1 && cs.list[0].id == DefaultConn {
		e := &cs.list[0]
		s.setTimes(e.lastSeen, e.expiry-e.lastSeen)
		delete(st.conns, i)
		if e.state != nil {
			if st.states == nil {
				st.states = map[uint32][]byte{}
			}
			st.states[i] = e.state
		}
	} else {
		f := cs.first()
		s.setTimes(f.lastSeen, f.expiry-f.lastSeen)
	}
	st.linkWheel(i)
}

// setConnState applies op to connection e and reports whether it changed.
func setConnState(e *connEntry, op StateOp) bool {
	if !op.Set {
		return false
	}
	if op.State == nil {
		had := e.state != nil
		e.state = nil
		return had
	}
	if e.state != nil && string(e.state) == string(op.State) {
		return false
	}
	e.state = bytes.Clone(op.State)
	return true
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

func (cs *connSet) appendDurable(dst []byte) []byte {
	dst = append(dst, connsMagic, byte(len(cs.list)))
	for k := range cs.list {
		e := &cs.list[k]
		dst = append(dst, byte(len(e.id)))
		dst = append(dst, e.id...)
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.lastSeen))
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.expiry))
		dst = binary.AppendUvarint(dst, uint64(len(e.state)))
		dst = append(dst, e.state...)
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
func (m *Map) expireConnsLocked(st *userState, i uint32, cs *connSet, now int64, dst []Event) []Event {
	var room []byte
	for k := 0; k < len(cs.list); {
		if cs.list[k].expiry > now {
			k++
			continue
		}
		id := cs.list[k].id
		cs.remove(k)
		m.extraConns.Add(-1)
		if room == nil {
			room = m.roomName(st.session(i).room)
		}
		dst = append(dst, st.connEvent(i, cs, room, id, ReasonTimeout, now))
	}
	st.session(i).logged = 0
	st.settle(i, cs)
	if m.track {
		st.logUpsert(i)
	}
	return dst
}

// connEvent is the update event for connection id of session i ending
// while the session stays.
func (st *userState) connEvent(i uint32, cs *connSet, room []byte, id string, reason Reason, now int64) Event {
	return Event{
		User: string(st.userID(st.session(i).user)), Room: string(room), At: now,
		Update: true, Reason: reason, Conn: id, LastSeen: cs.maxSeen(),
		State: bytes.Clone(cs.list[cs.recent].state), Conns: cs.snapshot(nil),
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
		if cs := st.connsOf(i); cs != nil {
			if k := cs.find(conn); k >= 0 {
				ended++
				if len(cs.list) == 1 {
					dst = m.endSession(st, i, reason, now, true, dst)
				} else {
					cs.remove(k)
					m.extraConns.Add(-1)
					dst = append(dst, st.connEvent(i, cs, m.roomName(s.room), string(conn), reason, now))
					s.logged = 0
					st.settle(i, cs)
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
