package shardmap

import "bytes"

// memberRef is a member slot copied out of a room under its lock.
type memberRef struct {
	slot uint32
	ref  uint64
}

// Members lists up to limit members of room, starting at cursor (0: from the
// start), and returns the cursor of the next page, 0 at the end. The cursor
// is a member-slot position (slot+1): a member keeps its slot while its
// session lives, so a member present for the whole walk is returned exactly
// once; members that join during the walk may or may not be seen. A page may
// hold fewer than limit members (even none) while next is not 0: slots are
// copied under the room lock and then resolved under each user's shard lock,
// and a member that left in between is skipped. If the room is freed during
// the call, Members returns no members and next 0.
func (m *Map) Members(room []byte, cursor uint64, limit int, dst []Member) (members []Member, next uint64) {
	if len(room) == 0 || len(room) > MaxIDLen || limit <= 0 {
		return dst, 0
	}
	start := uint64(0)
	if cursor > 0 {
		start = cursor - 1
	}
	h := m.hash(room)
	rsi := h & m.roomMask
	rs := &m.rooms[rsi]

	var stack [64]memberRef
	refs := stack[:0]
	rs.mu.Lock()
	ri := rs.mu.find(h, room)
	if ri == 0 {
		rs.mu.Unlock()
		return dst, 0
	}
	r := &rs.mu.rooms[ri]
	gen := r.gen
	i := start
	for ; i < uint64(len(r.members)) && len(refs) < limit; i++ {
		if v := r.members[i]; v&memberFree == 0 {
			refs = append(refs, memberRef{slot: uint32(i), ref: v})
		}
	}
	for i < uint64(len(r.members)) && r.members[i]&memberFree != 0 {
		i++
	}
	if i < uint64(len(r.members)) {
		next = i + 1
	}
	rs.mu.Unlock()

	roomRef := m.roomRef(rsi, ri)
	base := len(dst)
	for _, mr := range refs {
		shard, ui, ugen := unpackRef(mr.ref)
		sh := &m.shards[shard]
		sh.mu.Lock()
		st := &sh.mu.userState
		if ui < st.nUsers {
			if u := st.user(ui); u.key != 0 && u.gen&0x7fff == ugen {
				for j := u.head; j != 0; j = st.session(j).next {
					if s := st.session(j); s.room == roomRef && s.slot == mr.slot {
						dst = append(dst, Member{User: string(st.userID(ui)), LastSeen: st.seenOf(j), State: bytes.Clone(st.stateOf(j)), Conns: st.connsSnapshot(j, nil)})
						break
					}
				}
			}
		}
		sh.mu.Unlock()
	}

	// The room record may have been freed and reused by another room while
	// unlocked; then the refs above may belong to that room.
	rs.mu.Lock()
	reused := rs.mu.rooms[ri].gen != gen
	rs.mu.Unlock()
	if reused {
		return dst[:base], 0
	}
	return dst, next
}

// RoomCount is a room and its online count, as TopRooms reports it.
type RoomCount struct {
	Room   string
	Online int
}

// before reports whether a ranks before b: more online, then smaller name.
func before(aOnline int, aName string, b *RoomCount) bool {
	if aOnline != b.Online {
		return aOnline > b.Online
	}
	return aName < b.Room
}

// TopRooms appends the n rooms with most online users to dst, most first,
// ties by name. It walks the room table shard by shard (one lock at a time)
// keeping a size-n min-heap, so it costs O(rooms * log n) time and allocates
// only the n names it returns; counts from different shards are read at
// slightly different times.
func (m *Map) TopRooms(n int, dst []RoomCount) []RoomCount {
	if n <= 0 {
		return dst
	}
	base := len(dst)
	for k := range m.rooms {
		rs := &m.rooms[k]
		rs.mu.Lock()
		for ri := 1; ri < len(rs.mu.rooms); ri++ {
			r := &rs.mu.rooms[ri]
			if r.n == 0 {
				continue
			}
			h := dst[base:]
			name := rs.mu.arena.bytes(r.off, r.n)
			if len(h) < n {
				dst = append(dst, RoomCount{Room: string(name), Online: int(r.online)})
				heapUp(dst[base:], len(h))
			} else if before(int(r.online), string(name), &h[0]) {
				h[0] = RoomCount{Room: string(name), Online: int(r.online)}
				heapDown(h, 0)
			}
		}
		rs.mu.Unlock()
	}
	// Pop the min-heap from the back: worst goes last.
	h := dst[base:]
	for end := len(h) - 1; end > 0; end-- {
		h[0], h[end] = h[end], h[0]
		heapDown(h[:end], 0)
	}
	return dst
}

// The heap keeps the worst-ranked room at the root.
func worse(a, b *RoomCount) bool { return before(b.Online, b.Room, a) }

func heapUp(h []RoomCount, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !worse(&h[i], &h[p]) {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func heapDown(h []RoomCount, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && worse(&h[r], &h[l]) {
			c = r
		}
		if !worse(&h[c], &h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// Change is one entry of the change log (see Drain).
type Change struct {
	// User and Room are valid only during the callback: copy what you keep.
	User, Room []byte
	// LastSeen and Expiry are the session's times (unix ms); for an end,
	// those it had when it ended.
	LastSeen, Expiry int64
	// State is a live session's state (nil: none), valid only during the
	// callback like User and Room; nil for an end. For a session with
	// named connections it is the member's state (its latest connection's).
	State []byte
	// Conns is, for a live session with named connections, all of them in
	// their durable form (see IsConns; RestoreState takes it as the state);
	// nil otherwise. Valid only during the callback.
	Conns []byte
	// Logged, for an upsert, is the session's expiry (unix ms, rounded
	// down to the second) as the sink that persists it last recorded it: 0
	// for a new session, one whose state changed since, or one never
	// recorded. A sink that records the change sets Logged = Expiry before
	// fn returns, and Drain keeps that for the session's next change; so a
	// log can skip refreshes while the expiry it holds is far enough ahead.
	Logged int64
	// Ended: the session ended (Reason, At); otherwise it was created or
	// refreshed and is live with the times above.
	Ended  bool
	Reason Reason
	At     int64 // end time, unix ms; 0 for an upsert
}

// Drain calls fn for every change since the previous Drain, shard by shard,
// in the order the changes happened within each shard (all sessions of a
// user are in one shard, so per user the order holds), and returns how many
// it delivered. An upsert appears once per session however often it was
// refreshed, with the session's current times; a session that ended and
// was created again drains as the end, then the upsert. A session created
// and ended between two drains drains as its end alone. Only with
// Config.TrackChanges; otherwise Drain returns 0.
//
// fn runs with the shard's lock held: it must not block and must not call
// back into the Map. The Change and its byte slices are reused after fn
// returns.
func (m *Map) Drain(fn func(c *Change)) (n int) {
	if !m.track {
		return 0
	}
	for k := range m.shards {
		sh := &m.shards[k]
		sh.mu.Lock()
		st := &sh.mu.userState
		c := &st.change // not a local: fn(&c) would make it escape
		for _, e := range st.changes {
			var up *sessRec // the live session of an upsert
			if e.sess == 0 {
				u := st.endBuf[e.endOff : e.endOff+uint32(e.userLen)]
				r := st.endBuf[e.endOff+uint32(e.userLen) : e.endOff+uint32(e.userLen)+uint32(e.roomLen)]
				*c = Change{User: u, Room: r, LastSeen: e.lastSeen, Expiry: e.expiry, Ended: true, Reason: e.reason, At: e.at}
			} else {
				up = st.session(e.sess)
				if up.user == 0 {
					continue // ended since; its end entry follows
				}
				up.ttl &^= sessDirty
				st.roomBuf = st.roomBuf[:0]
				if up.room != 0 {
					rs, ri := m.roomOf(up.room)
					rs.mu.Lock()
					st.roomBuf = append(st.roomBuf, rs.mu.name(ri)...)
					rs.mu.Unlock()
				}
				*c = Change{User: st.userID(up.user), Room: st.roomBuf, LastSeen: st.seenOf(e.sess), Expiry: st.untilOf(e.sess), State: st.stateOf(e.sess), Logged: int64(up.logged) * 1000}
				if l, ok := st.connsOf(e.sess); ok {
					st.connBuf = st.appendDurable(l, st.connBuf[:0])
					c.Conns = st.connBuf
				}
			}
			fn(c)
			if up != nil {
				up.logged = uint32(c.Logged / 1000) // what the sink recorded, for the next change
			}
			n++
		}
		st.changes = st.changes[:0]
		st.endBuf = st.endBuf[:0]
		*c = Change{}
		for st.pendingFree != 0 {
			i := st.pendingFree
			st.pendingFree = st.session(i).next
			st.releaseSession(i, false)
		}
		sh.mu.Unlock()
	}
	return n
}

// Relog marks every live session changed with no logged expiry (see
// Change.Logged), so the next Drain hands each one to its sinks and a log
// that skips refreshes writes them all with their current times. A server
// calls it before its final drain, so a clean restart restores exact
// times. Only with Config.TrackChanges.
func (m *Map) Relog() {
	if !m.track {
		return
	}
	for k := range m.shards {
		sh := &m.shards[k]
		sh.mu.Lock()
		st := &sh.mu.userState
		for i := uint32(1); i < st.nSess; i++ {
			if s := st.session(i); s.user != 0 {
				s.logged = 0
				st.logUpsert(i)
			}
		}
		sh.mu.Unlock()
	}
}

// Range calls fn for every session, shard by shard: each shard is copied
// under its lock, then fn runs unlocked, so fn may call the Map. Each shard
// is a consistent snapshot; the whole walk is not. fn's byte slices are valid
// only during the call. Range stops when fn returns false.
func (m *Map) Range(fn func(user, room []byte, lastSeen, expiry int64) bool) {
	m.RangeState(func(user, room, _ []byte, lastSeen, expiry int64) bool { return fn(user, room, lastSeen, expiry) })
}

// RangeState is Range that also passes each session's state (nil: none),
// valid only during the call.
func (m *Map) RangeState(fn func(user, room, state []byte, lastSeen, expiry int64) bool) {
	type entry struct {
		off              int
		userLen, roomLen uint8
		stateLen         uint16
		lastSeen, expiry int64
	}
	var buf []byte
	var ents []entry
	for k := range m.shards {
		sh := &m.shards[k]
		buf, ents = buf[:0], ents[:0]
		sh.mu.Lock()
		st := &sh.mu.userState
		for ui := uint32(1); ui < st.nUsers; ui++ {
			u := st.user(ui)
			if u.key == 0 {
				continue
			}
			for i := u.head; i != 0; i = st.session(i).next {
				s := st.session(i)
				e := entry{off: len(buf), userLen: u.n(), lastSeen: st.seenOf(i), expiry: st.untilOf(i)}
				buf = append(buf, st.userID(ui)...)
				if s.room != 0 {
					rs, ri := m.roomOf(s.room)
					rs.mu.Lock()
					name := rs.mu.name(ri)
					buf = append(buf, name...)
					e.roomLen = uint8(len(name))
					rs.mu.Unlock()
				}
				stt := st.stateOf(i)
				buf = append(buf, stt...)
				e.stateLen = uint16(len(stt))
				ents = append(ents, e)
			}
		}
		sh.mu.Unlock()
		for _, e := range ents {
			u := buf[e.off : e.off+int(e.userLen)]
			r := buf[e.off+int(e.userLen) : e.off+int(e.userLen)+int(e.roomLen)]
			var stt []byte
			if e.stateLen > 0 {
				so := e.off + int(e.userLen) + int(e.roomLen)
				stt = buf[so : so+int(e.stateLen)]
			}
			if !fn(u, r, stt, e.lastSeen, e.expiry) {
				return
			}
		}
	}
}
