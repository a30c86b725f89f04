package shardmap

import (
	"bytes"
	"cmp"
	"hash/maphash"
	"slices"
	"sync/atomic"
	"time"
)

// Reason says why a session ended.
type Reason uint8

const (
	// ReasonLeft is an explicit leave.
	ReasonLeft Reason = 1
	// ReasonTimeout is an expiry: no heartbeat for ttl.
	ReasonTimeout Reason = 2
	// ReasonDisconnect is the end of a session whose WebSocket closed.
	ReasonDisconnect Reason = 3
)

func (r Reason) String() string {
	switch r {
	case ReasonLeft:
		return "left"
	case ReasonTimeout:
		return "timeout"
	case ReasonDisconnect:
		return "disconnect"
	}
	return "unknown"
}

// Event is a join or a leave. The Map itself only produces leaves (from
// LeaveAll and Expire); Touch reports joins by its result.
type Event struct {
	User, Room string
	At         int64 // unix ms
	Join       bool  // false: leave
	Reason     Reason
	// State is the state the session had when it ended (a copy), or nil.
	State []byte
	// Vacated: this leave emptied the room (its last member left).
	Vacated bool
	// LastSeen is, for a leave, the ended session's last heartbeat (unix ms).
	LastSeen int64
	// Update: not a join or leave but a connection of a member that stays
	// ended (Conn; Reason says why). State is then the member's state
	// after the change and Conns its connections after it.
	Update bool
	Conn   string
	Conns  []Conn
}

// RoomSession is one of a user's sessions, as User reports it.
type RoomSession struct {
	Room             string
	LastSeen, Expiry int64
	// State is the session's state (a copy), or nil.
	State []byte
	// Conns are the session's connections (copies); nil when it only has
	// its default connection, which is then the session itself.
	Conns []Conn
}

// Member is one member of a room, as Members reports it.
type Member struct {
	User     string
	LastSeen int64
	// State is the member's session state in the room (a copy), or nil.
	State []byte
	// Conns are the member's connections in the room (copies); nil when it
	// only has its default connection, which is then the session itself.
	Conns []Conn
}

// StateOp says what a heartbeat does to a session's state.
type StateOp struct {
	// Set: replace the state with State (nil clears it). Without Set the
	// state is kept.
	Set   bool
	State []byte
}

// Stats are the maintained global counts.
type Stats struct {
	OnlineUsers, Sessions, Rooms int64
	// Connections counts every session's connections.
	Connections int64
}

// Map is the in-memory presence table. It is safe for concurrent use.
type Map struct {
	hash      func([]byte) uint64
	shards    []userShard
	shardMask uint64
	rooms     []roomShard
	roomMask  uint64
	roomBits  uint
	maxRoomIx uint32 // largest room record index a packed ref can hold
	maxRooms  int
	maxConns  int
	track     bool
	// minGapMs is the per-session refresh limit (SetMinRefreshGap).
	minGapMs atomic.Int64

	onlineUsers atomic.Int64
	sessions    atomic.Int64
	nrooms      atomic.Int64
	// extraConns is the connections beyond each session's first.
	extraConns atomic.Int64
}

// New returns an empty Map. Zero Config fields take their defaults.
func New(cfg Config) (*Map, error) {
	seed := maphash.MakeSeed()
	return newWithHash(cfg, func(b []byte) uint64 { return maphash.Bytes(seed, b) })
}

// newWithHash is New with the id hash as a parameter, so tests can force
// collisions.
func newWithHash(cfg Config, hash func([]byte) uint64) (*Map, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := &Map{
		hash:      hash,
		shards:    make([]userShard, cfg.Shards),
		shardMask: uint64(cfg.Shards - 1),
		rooms:     make([]roomShard, cfg.RoomShards),
		roomMask:  uint64(cfg.RoomShards - 1),
		roomBits:  log2(cfg.RoomShards),
		maxRooms:  cfg.MaxRoomsPerUser,
		maxConns:  cfg.MaxConnsPerSession,
		track:     cfg.TrackChanges,
	}
	m.maxRoomIx = min(uint32(1<<(32-m.roomBits)-1), maxIndexed)
	for i := range m.shards {
		st := &m.shards[i].mu.userState
		st.wheel = make([]uint32, cfg.WheelSlots)
		st.wheelMask = uint64(cfg.WheelSlots - 1)
		st.tickMs = cfg.Tick.Milliseconds()
	}
	return m, nil
}

func (m *Map) roomRef(shard uint64, ri uint32) uint32 { return ri<<m.roomBits | uint32(shard) }

func (m *Map) roomOf(ref uint32) (*roomShard, uint32) {
	return &m.rooms[uint64(ref)&m.roomMask], ref >> m.roomBits
}

// lookupRoom returns the ref of room, or 0 if it does not exist.
func (m *Map) lookupRoom(room []byte) uint32 {
	h := m.hash(room)
	rs := &m.rooms[h&m.roomMask]
	rs.mu.Lock()
	ri := rs.mu.find(h, room)
	rs.mu.Unlock()
	if ri == 0 {
		return 0
	}
	return m.roomRef(h&m.roomMask, ri)
}

// Touch creates or refreshes the session (user, room): its lastSeen becomes
// now and its expiry now+ttlMs (ttlMs is clamped to 0..2^31-1). joined
// reports that the session is new. An empty room means "online only": the
// session counts for the user but belongs to no room. Touch allocates nothing
// when it refreshes a session, nor when it starts one and the shard's arenas
// and tables have room (e.g. after a leave).
func (m *Map) Touch(user, room []byte, now, ttlMs int64) (joined bool, err error) {
	r, err := m.upsertRoom(user, room, nil, now, now+ttlMs, m.minGapMs.Load(), StateOp{})
	return r.Joined, err
}

// TouchState is Touch that also sets or clears the session's state
// (op.Set) and reports whether the state changed (a join with a state
// counts as a change). The state is copied. A rate-limited heartbeat
// changes nothing, state included. With op.Set false it allocates nothing,
// like Touch. It speaks for the session's default connection.
func (m *Map) TouchState(user, room []byte, now, ttlMs int64, op StateOp) (TouchResult, error) {
	return m.TouchConn(user, room, nil, now, ttlMs, op)
}

// TouchConn is TouchState for one connection of the session (conn; empty
// is the default connection). The connection's lastSeen becomes now, its
// expiry now+ttlMs and op applies to its state. A refresh of a known
// connection whose state does not change allocates nothing.
func (m *Map) TouchConn(user, room, conn []byte, now, ttlMs int64, op StateOp) (TouchResult, error) {
	return m.upsertRoom(user, room, conn, now, now+ttlMs, m.minGapMs.Load(), op)
}

// TouchResult is what TouchState did.
type TouchResult struct {
	Joined   bool  // the session is new
	Changed  bool  // the connection's state changed (a join with a state counts)
	Occupied bool  // the join created the room (its first member)
	PrevSeen int64 // the connection's previous heartbeat, 0 when it is new
	// ConnStarted: a connection started in a session that was already live.
	ConnStarted bool
	// Conns, when the session has named connections and a connection
	// started or changed its state (an update event), are the session's
	// connections after the heartbeat (copies); State the member's state.
	Conns []Conn
	State []byte
}

// setStateLocked applies op to session i and reports whether it changed.
func (st *userState) setStateLocked(i uint32, op StateOp) bool { return applyState(&st.states, i, op) }

// applyState applies op to the state of record k in states (a side map
// created on first use) and reports whether it changed. The state is copied.
func applyState(states *map[uint32][]byte, k uint32, op StateOp) bool {
	if !op.Set {
		return false
	}
	old, had := (*states)[k]
	if op.State == nil {
		if had {
			delete(*states, k)
		}
		return had
	}
	if had && string(old) == string(op.State) {
		return false
	}
	if *states == nil {
		*states = map[uint32][]byte{}
	}
	(*states)[k] = append(old[:0:0], op.State...)
	return true
}

// stateOf returns session i's state (not a copy), or nil: for a session
// with named connections, that of its most recently heartbeated one.
func (st *userState) stateOf(i uint32) []byte {
	if l, ok := st.connsOf(i); ok {
		return st.connState(l.recent)
	}
	if st.states == nil {
		return nil
	}
	return st.states[i]
}

// SetMinRefreshGap limits how often one session can be extended: a Touch
// that comes less than gap after the session's last accepted heartbeat
// changes nothing and fails with ErrRateLimited, so a flood of heartbeats
// for one user neither keeps a session alive longer nor multiplies change
// records. Zero (the default) turns the limit off. Safe to call at any time.
func (m *Map) SetMinRefreshGap(gap time.Duration) { m.minGapMs.Store(gap.Milliseconds()) }

// Restore inserts or overwrites the session (user, room) with an explicit
// lastSeen and expiry, for log replay. If expiry <= now nothing is inserted
// and Restore reports false; otherwise it reports whether the session is new.
func (m *Map) Restore(user, room []byte, lastSeen, expiry, now int64) (bool, error) {
	return m.RestoreState(user, room, nil, lastSeen, expiry, now)
}

// RestoreState is Restore with the session's state (nil: none), or its
// connections in their durable form (IsConns): each is restored with its
// own times and state, its expiry raised to the session's (a log may have
// skipped a connection's later refreshes), and the whole session is
// skipped when expiry <= now.
func (m *Map) RestoreState(user, room, state []byte, lastSeen, expiry, now int64) (bool, error) {
	if len(user) == 0 || len(user) > MaxIDLen || len(room) > MaxIDLen {
		return false, ErrBadID
	}
	if expiry <= now {
		return false, nil
	}
	if !IsConns(state) {
		r, err := m.upsertRoom(user, room, nil, lastSeen, expiry, 0, StateOp{Set: true, State: state})
		return r.Joined, err
	}
	conns, ok := DecodeConns(state)
	if !ok || len(conns) == 0 {
		r, err := m.upsertRoom(user, room, nil, lastSeen, expiry, 0, StateOp{Set: true})
		return r.Joined, err
	}
	// Oldest heartbeat first, so the member's state ends as the latest's.
	slices.SortStableFunc(conns, func(a, b Conn) int { return cmp.Compare(a.LastSeen, b.LastSeen) })
	joined := false
	for k, c := range conns {
		r, err := m.upsertRoom(user, room, []byte(c.ID), c.LastSeen, max(c.Expiry, expiry), 0, StateOp{Set: true, State: c.State})
		if err != nil && k == 0 {
			return false, err
		}
		joined = joined || r.Joined
	}
	return joined, nil
}

// upsertRoom creates or refreshes connection conn of session (user, room).
func (m *Map) upsertRoom(user, room, conn []byte, lastSeen, expiry, minGap int64, sop StateOp) (r TouchResult, err error) {
	if len(user) == 0 || len(user) > MaxIDLen || len(room) > MaxIDLen {
		return r, ErrBadID
	}
	if len(conn) > MaxConnIDLen {
		return r, ErrBadConn
	}
	ttl := expiry - lastSeen
	if ttl < 0 {
		ttl, lastSeen = 0, expiry
	} else if ttl > maxTTLMs {
		ttl = maxTTLMs
	}
	expiry = lastSeen + ttl
	h := m.hash(user)
	si := h & m.shardMask
	sh := &m.shards[si]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := &sh.mu.userState

	ui := st.findUser(h, user)
	if ui != 0 {
		var ref uint32
		if len(room) > 0 {
			ref = m.lookupRoom(room)
		}
		if ref != 0 || len(room) == 0 {
			for i := st.user(ui).head; i != 0; {
				s := st.session(i)
				if s.room == ref {
					if len(conn) > 0 || st.hasConns(i) {
						return m.touchConnLocked(st, i, conn, lastSeen, expiry, minGap, sop)
					}
					if minGap > 0 && lastSeen-s.lastSeen() < minGap && lastSeen >= s.lastSeen() {
						r.PrevSeen = s.lastSeen()
						return r, ErrRateLimited
					}
					r.PrevSeen = s.lastSeen()
					if old := s.expiry(); lastSeen+ttl >= old {
						// Later: the session stays in its wheel slot and
						// Expire moves it on when it gets there, so a
						// refresh touches no neighbour in the wheel.
						s.setTimes(lastSeen, ttl)
					} else {
						st.unlinkWheel(i)
						s.setTimes(lastSeen, ttl)
						st.linkWheel(i)
					}
					if r.Changed = st.setStateLocked(i, sop); r.Changed {
						s.logged = 0 // the logged record has another state
					}
					if m.track {
						st.logUpsert(i)
					}
					return r, nil
				}
				i = s.next
			}
		}
		if int(st.user(ui).nsess) >= m.maxRooms {
			return r, ErrTooManyRooms
		}
	} else {
		if ui = st.newUser(h, user); ui == 0 {
			return r, ErrFull
		}
		m.onlineUsers.Add(1)
	}
	u := st.user(ui)

	var ref, slot uint32
	if len(room) > 0 {
		rh := m.hash(room)
		rsi := rh & m.roomMask
		rs := &m.rooms[rsi]
		rs.mu.Lock()
		ri := rs.mu.find(rh, room)
		if ri == 0 {
			if ri = rs.mu.create(rh, room, m.maxRoomIx); ri != 0 {
				m.nrooms.Add(1)
				r.Occupied = true
			}
		}
		if ri != 0 {
			slot = rs.mu.addMember(ri, packRef(int(si), ui, u.gen))
			ref = m.roomRef(rsi, ri)
		}
		rs.mu.Unlock()
		if ri == 0 {
			m.dropUserIfIdle(st, ui)
			return r, ErrFull
		}
	}
	// The records the session needs are taken before it is linked anywhere,
	// so a full table leaves nothing behind.
	var c uint32 // its named connection
	if len(conn) > 0 {
		c = st.newConn(conn)
	}
	i := uint32(0)
	if c != 0 || len(conn) == 0 {
		i = st.newSession()
	}
	if i == 0 {
		if c != 0 {
			st.freeConnRec(c)
		}
		if ref != 0 {
			m.leaveRoom(ref, slot, nil)
		}
		m.dropUserIfIdle(st, ui)
		return r, ErrFull
	}
	s := st.session(i)
	s.user, s.room, s.slot = ui, ref, slot
	s.setTimes(lastSeen, ttl)
	s.next = u.head
	u.head = i
	u.nsess++
	st.linkWheel(i)
	if c != 0 {
		cr := st.conn(c)
		cr.lastSeen, cr.expiry = lastSeen, expiry
		r.Changed = st.setConnState(c, sop)
		if st.conns == nil {
			st.conns = map[uint32]connList{}
		}
		st.conns[i] = connList{head: c, recent: c}
	} else {
		r.Changed = st.setStateLocked(i, sop)
	}
	if m.track {
		st.logUpsert(i)
	}
	m.sessions.Add(1)
	r.Joined = true
	return r, nil
}

// touchConnLocked refreshes or starts connection conn of live session i,
// giving the session a connection list if it has none.
func (m *Map) touchConnLocked(st *userState, i uint32, conn []byte, lastSeen, expiry, minGap int64, sop StateOp) (r TouchResult, err error) {
	l, ok := st.connsOf(i)
	var c uint32
	if ok {
		c = st.findConn(l, conn)
	}
	if c != 0 {
		e := st.conn(c)
		if minGap > 0 && lastSeen-e.lastSeen < minGap && lastSeen >= e.lastSeen {
			r.PrevSeen = e.lastSeen
			return r, ErrRateLimited
		}
		r.PrevSeen = e.lastSeen
	} else {
		n := 1
		if ok {
			n = st.countConns(l)
		}
		if n >= m.maxConns {
			return r, ErrTooManyConns
		}
		if !ok {
			if l, ok = st.promote(i); !ok {
				return r, ErrFull
			}
		}
		if l, c = st.addConn(i, l, conn); c == 0 {
			st.settle(i, l)
			return r, ErrFull
		}
		r.ConnStarted = true
		m.extraConns.Add(1)
	}
	e := st.conn(c)
	e.lastSeen, e.expiry = lastSeen, expiry
	r.Changed = st.setConnState(c, sop)
	l.recent = c
	st.conns[i] = l
	if r.Changed || r.ConnStarted {
		st.session(i).logged = 0 // the logged record has other connections
		r.Conns = st.connsSnapshot(i, nil)
		r.State = bytes.Clone(st.connState(c))
	}
	st.settle(i, l)
	if m.track {
		st.logUpsert(i)
	}
	return r, nil
}

func (m *Map) dropUserIfIdle(st *userState, ui uint32) {
	if st.user(ui).nsess == 0 {
		st.freeUserRec(ui)
		m.onlineUsers.Add(-1)
	}
}

// leaveRoom frees the member slot and, if the room is now empty, the room.
// If name is not nil, the room id is appended to *name first. The caller
// holds the user shard lock (lock order: user shard, then room shard).
func (m *Map) leaveRoom(ref, slot uint32, name *[]byte) (emptied bool) {
	rs, ri := m.roomOf(ref)
	rs.mu.Lock()
	if name != nil {
		*name = append(*name, rs.mu.name(ri)...)
	}
	if rs.mu.removeMember(ri, slot) {
		rs.mu.free(ri)
		m.nrooms.Add(-1)
		emptied = true
	}
	rs.mu.Unlock()
	return emptied
}

// endSession removes session i and, if emit, appends a
// leave event to dst. It frees the user when it was their last session.
func (m *Map) endSession(st *userState, i uint32, reason Reason, now int64, emit bool, dst []Event) []Event {
	s := st.session(i)
	ui := s.user
	u := st.user(ui)
	if u.head == i {
		u.head = s.next
	} else {
		p := u.head
		for st.session(p).next != i {
			p = st.session(p).next
		}
		st.session(p).next = s.next
	}
	u.nsess--
	st.unlinkWheel(i)
	lastSeen, expiry := st.seenOf(i), st.untilOf(i)

	uid := st.arena.bytes(u.off, u.n())
	endOff := len(st.endBuf)
	if m.track {
		st.endBuf = append(st.endBuf, uid...)
	}
	var roomName string
	var vacated bool
	if s.room != 0 {
		if m.track || emit {
			mark := len(st.endBuf)
			vacated = m.leaveRoom(s.room, s.slot, &st.endBuf)
			if emit {
				roomName = string(st.endBuf[mark:])
			}
			if !m.track {
				st.endBuf = st.endBuf[:mark]
			}
		} else {
			m.leaveRoom(s.room, s.slot, nil)
		}
	}
	if emit {
		dst = append(dst, Event{User: string(uid), Room: roomName, At: now, Reason: reason, LastSeen: lastSeen, State: bytes.Clone(st.stateOf(i)), Vacated: vacated})
	}
	dirty := s.ttl&sessDirty != 0
	if m.track {
		st.changes = append(st.changes, changeRec{
			endOff:   uint32(endOff),
			userLen:  u.n(),
			roomLen:  uint8(len(st.endBuf) - endOff - int(u.n())),
			reason:   reason,
			lastSeen: lastSeen,
			expiry:   expiry,
			at:       now,
		})
	}
	if st.states != nil {
		delete(st.states, i)
	}
	if st.hasConns(i) {
		m.extraConns.Add(-int64(st.dropConns(i) - 1))
	}
	st.releaseSession(i, m.track && dirty)
	m.sessions.Add(-1)
	if u.nsess == 0 {
		st.freeUserRec(ui)
		m.onlineUsers.Add(-1)
	}
	return dst
}

// Leave ends the session (user, room) with reason left and reports whether
// it existed.
func (m *Map) Leave(user, room []byte, now int64) bool {
	_, ended := m.leaveOne(user, room, now, ReasonLeft, false, nil)
	return ended
}

// LeaveOne is Leave that appends the leave event (with Vacated) to dst.
func (m *Map) LeaveOne(user, room []byte, now int64, dst []Event) []Event {
	return m.LeaveOneReason(user, room, now, ReasonLeft, dst)
}

// LeaveOneReason is LeaveOne with the reason of the event and of the change
// log record (ReasonLeft, or ReasonDisconnect when a WebSocket closed).
func (m *Map) LeaveOneReason(user, room []byte, now int64, reason Reason, dst []Event) []Event {
	dst, _ = m.leaveOne(user, room, now, reason, true, dst)
	return dst
}

// leaveOne ends the session (user, room) with reason, appending its event
// to dst when emit, and reports whether it existed.
func (m *Map) leaveOne(user, room []byte, now int64, reason Reason, emit bool, dst []Event) ([]Event, bool) {
	if len(user) == 0 || len(user) > MaxIDLen || len(room) > MaxIDLen {
		return dst, false
	}
	h := m.hash(user)
	sh := &m.shards[h&m.shardMask]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := &sh.mu.userState
	ui := st.findUser(h, user)
	if ui == 0 {
		return dst, false
	}
	var ref uint32
	if len(room) > 0 {
		if ref = m.lookupRoom(room); ref == 0 {
			return dst, false
		}
	}
	for i := st.user(ui).head; i != 0; i = st.session(i).next {
		if st.session(i).room == ref {
			return m.endSession(st, i, reason, now, emit, dst), true
		}
	}
	return dst, false
}

// LeaveAll ends every session of user with reason left and appends a leave
// event for each to dst.
func (m *Map) LeaveAll(user []byte, now int64, dst []Event) []Event {
	return m.leaveAllReason(user, now, ReasonLeft, dst)
}

func (m *Map) leaveAllReason(user []byte, now int64, reason Reason, dst []Event) []Event {
	if len(user) == 0 || len(user) > MaxIDLen {
		return dst
	}
	h := m.hash(user)
	sh := &m.shards[h&m.shardMask]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := &sh.mu.userState
	ui := st.findUser(h, user)
	if ui == 0 {
		return dst
	}
	for n := st.user(ui).nsess; n > 0; n-- {
		dst = m.endSession(st, st.user(ui).head, reason, now, true, dst)
	}
	return dst
}

// Expire ends every session whose expiry is <= now, appending a leave event
// with reason timeout for each to dst. Per shard it looks only at the wheel
// slots of the ticks since the previous call (at most WheelSlots of them),
// so its cost is the number of expired sessions plus elapsed ticks, plus
// sessions that share those slots but wrap the wheel (ttl > Tick*WheelSlots).
// Call it about once per Tick.
func (m *Map) Expire(now int64, dst []Event) []Event {
	for k := range m.shards {
		sh := &m.shards[k]
		sh.mu.Lock()
		dst = m.expireLocked(&sh.mu.userState, now, dst)
		sh.mu.Unlock()
	}
	return dst
}

func (m *Map) expireLocked(st *userState, now int64, dst []Event) []Event {
	nowTick := floorDiv(now, st.tickMs)
	start := st.nextTick
	if nowTick < start {
		return dst
	}
	if n := int64(len(st.wheel)); nowTick-start >= n {
		start = nowTick - n + 1
	}
	for t := start; t <= nowTick; t++ {
		slot := uint64(t) & st.wheelMask
		for i := st.wheel[slot]; i != 0; {
			s := st.session(i)
			next := s.wnext
			if s.expiry() <= now {
				if l, ok := st.connsOf(i); ok && st.maxExpiry(l) > now {
					dst = m.expireConnsLocked(st, i, l, now, dst)
				} else {
					dst = m.endSession(st, i, ReasonTimeout, now, true, dst)
				}
			} else if st.wheelSlot(s.expiry()) != uint32(slot) {
				// refreshed since it was linked here: move it to its slot
				st.unlinkWheel(i)
				st.linkWheel(i)
			}
			i = next
		}
	}
	st.nextTick = nowTick // nowTick is only partly done: look at it again
	return dst
}

// User returns the user's sessions with a room (appended to dst), the
// latest lastSeen over all their sessions (room-less ones included), and
// whether they are online. Sessions past their expiry count until Expire
// removes them.
func (m *Map) User(user []byte, dst []RoomSession) (rooms []RoomSession, lastSeen int64, online bool) {
	if len(user) == 0 || len(user) > MaxIDLen {
		return dst, 0, false
	}
	h := m.hash(user)
	sh := &m.shards[h&m.shardMask]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := &sh.mu.userState
	ui := st.findUser(h, user)
	if ui == 0 {
		return dst, 0, false
	}
	for i := st.user(ui).head; i != 0; {
		s := st.session(i)
		ls := st.seenOf(i)
		if !online || ls > lastSeen {
			lastSeen = ls
		}
		online = true
		if s.room != 0 {
			rs, ri := m.roomOf(s.room)
			rs.mu.Lock()
			name := string(rs.mu.name(ri))
			rs.mu.Unlock()
			dst = append(dst, RoomSession{Room: name, LastSeen: ls, Expiry: st.untilOf(i), State: bytes.Clone(st.stateOf(i)), Conns: st.connsSnapshot(i, nil)})
		} else if stt := st.stateOf(i); stt != nil || st.hasConns(i) {
			// The room-less session appears only when it carries a state
			// or named connections.
			dst = append(dst, RoomSession{LastSeen: ls, Expiry: st.untilOf(i), State: bytes.Clone(stt), Conns: st.connsSnapshot(i, nil)})
		}
		i = s.next
	}
	return dst, lastSeen, online
}

// RoomOnline returns the number of users with a session in room.
func (m *Map) RoomOnline(room []byte) int {
	if len(room) == 0 || len(room) > MaxIDLen {
		return 0
	}
	h := m.hash(room)
	rs := &m.rooms[h&m.roomMask]
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if ri := rs.mu.find(h, room); ri != 0 {
		return int(rs.mu.rooms[ri].online)
	}
	return 0
}

// Stats returns the maintained counts: online users, sessions, rooms. The
// three are read separately and may be off by a concurrent change.
func (m *Map) Stats() Stats {
	sessions := m.sessions.Load()
	return Stats{
		OnlineUsers: m.onlineUsers.Load(),
		Sessions:    sessions,
		Rooms:       m.nrooms.Load(),
		Connections: sessions + m.extraConns.Load(),
	}
}
