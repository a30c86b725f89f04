package shardmap

import (
	"slices"
	"sync"
)

// userShard is one user shard: the users whose id hash selects it, all their
// sessions, and the timing wheel and change log of those sessions.
type userShard struct {
	mu struct {
		sync.Mutex
		userState
	}
	_ [64]byte // keep neighbouring locks off one cache line
}

// userRec is one interned user (16 bytes).
type userRec struct {
	off   uint32 // id in the arena; for a free record, the next free record
	head  uint32 // first session of the user's list, 0 = none
	key   uint32 // index tag<<8 | id length; 0 = free record
	gen   uint16 // bumped when the record is freed (checked by Members)
	nsess uint16 // sessions in the list
}

func (u *userRec) n() uint8 { return uint8(u.key) }

// sessRec is one session (40 bytes, no pointers). Indices are into the
// shard's session table; 0 means none.
type sessRec struct {
	user   uint32 // user record; 0 = free session
	room   uint32 // packed room ref (see Map.roomRef); 0 = no room
	next   uint32 // next session of the same user, or next free session
	wprev  uint32 // previous session in the wheel slot, or wheelHead|slot
	wnext  uint32 // next session in the wheel slot
	slot   uint32 // member slot in the room
	seenLo uint32 // lastSeen, unix ms, low half
	seenHi uint32 // lastSeen, high half
	ttl    uint32 // expiry-lastSeen in ms (31 bits) | sessDirty
	logged uint32 // Change.Logged in unix seconds (rounded down); 0 = none
}

const (
	wheelHead = uint32(1) << 31 // wprev of a slot's first session: wheelHead|slot
	sessDirty = uint32(1) << 31 // the session has an upsert in the change log
	maxRecIdx = 1<<31 - 1

	// 512 records: a session chunk is 20480 bytes and a user chunk 8192,
	// both exact Go size classes, so no chunk wastes a rounding tail.
	chunkBits = 9
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1
)

func (s *sessRec) lastSeen() int64 { return int64(uint64(s.seenHi)<<32 | uint64(s.seenLo)) }
func (s *sessRec) expiry() int64   { return s.lastSeen() + int64(s.ttl&^sessDirty) }

func (s *sessRec) setTimes(lastSeen, ttl int64) {
	s.seenLo, s.seenHi = uint32(lastSeen), uint32(uint64(lastSeen)>>32)
	s.ttl = s.ttl&sessDirty | uint32(ttl)
}

// changeRec is one change-log entry. An upsert names a live session (read at
// Drain time); an end keeps its own copy of the ids in endBuf.
type changeRec struct {
	sess     uint32 // upsert: session index; end: 0
	endOff   uint32 // end: user id then room id in endBuf
	userLen  uint8
	roomLen  uint8
	reason   Reason
	lastSeen int64
	expiry   int64
	at       int64
}

// userState is the part of a user shard guarded by its lock. Every method
// needs userShard.mu held. Users and sessions live in chunks of 512 records
// so growth never copies a big table and overshoots by at most one chunk.
type userState struct {
	// states holds the state (a small JSON object) of the sessions that
	// have one, by session index; nil until the first. Sessions without
	// state cost nothing here, which keeps the table pointer-free for them.
	states map[uint32][]byte
	// conns holds the connections of the sessions that have named ones, by
	// session index (see conn.go); nil until the first.
	conns       map[uint32]connList
	connRecs    [][]connRec // chunked; index 0 is reserved
	nConn       uint32
	freeConn    uint32            // free connection list, chained through next
	connArena   arena             // connection ids
	connStates  map[uint32][]byte // by connection record, those with a state
	connBuf     []byte            // Drain's buffer for Change.Conns
	index       idIndex
	arena       arena
	users       [][]userRec // chunked; index 0 is reserved
	nUsers      uint32      // records handed out so far, including 0
	freeUser    uint32      // free user list, chained through off
	sess        [][]sessRec // chunked; index 0 is reserved
	nSess       uint32
	freeSess    uint32 // free session list, chained through next
	pendingFree uint32 // ended sessions still named by the change log
	wheel       []uint32
	wheelMask   uint64
	tickMs      int64
	nextTick    int64 // first tick not completely processed by Expire
	changes     []changeRec
	endBuf      []byte
	scratch     []uint64
	roomBuf     []byte
	change      Change // passed to Drain's callback
}

func (st *userState) user(i uint32) *userRec    { return &st.users[i>>chunkBits][i&chunkMask] }
func (st *userState) session(i uint32) *sessRec { return &st.sess[i>>chunkBits][i&chunkMask] }

func (st *userState) userID(i uint32) []byte {
	u := st.user(i)
	return st.arena.bytes(u.off, u.n())
}

func (st *userState) userTag(i uint32) uint32 { return st.user(i).key >> 8 }

func (st *userState) findUser(h uint64, id []byte) uint32 {
	key := tagOf(h)<<8 | uint32(len(id))
	return st.index.find(tagOf(h), func(i uint32) bool {
		u := st.user(i)
		return u.key == key && string(st.arena.bytes(u.off, uint8(key))) == string(id)
	})
}

// newUser interns id (hash h) and returns its record, or 0 if the shard is full.
func (st *userState) newUser(h uint64, id []byte) uint32 {
	i := allocRec(&st.users, &st.nUsers, &st.freeUser, maxIndexed, func(i uint32) uint32 { return st.user(i).off })
	if i == 0 {
		return 0
	}
	u := st.user(i)
	u.off = st.arena.alloc(id)
	u.key = tagOf(h)<<8 | uint32(len(id))
	u.head, u.nsess = 0, 0
	st.index.insert(i, tagOf(h), st.userTag)
	return i
}

// freeUserRec releases user i, which has no sessions.
func (st *userState) freeUserRec(i uint32) {
	u := st.user(i)
	st.index.remove(i, u.key>>8, st.userTag)
	st.arena.release(u.off, u.n())
	u.key = 0
	u.gen++
	u.off = st.freeUser
	st.freeUser = i
	if st.arena.needsCompact() {
		st.compact()
	}
}

func (st *userState) compact() {
	live := st.scratch[:0]
	for i := uint32(1); i < st.nUsers; i++ {
		if u := st.user(i); u.key != 0 {
			live = append(live, uint64(u.off)<<32|uint64(i))
		}
	}
	slices.Sort(live)
	st.arena.compact(live,
		func(i uint32) uint8 { return st.user(i).n() },
		func(i, off uint32) { st.user(i).off = off })
	st.scratch = live[:0]
}

// newSession returns a zeroed session record, or 0 if the shard is full.
func (st *userState) newSession() uint32 {
	i := allocRec(&st.sess, &st.nSess, &st.freeSess, maxRecIdx, func(i uint32) uint32 { return st.session(i).next })
	if i != 0 {
		*st.session(i) = sessRec{}
	}
	return i
}

// allocRec takes a record index from a free list (chained through next)
// or past the table's high-water mark n, adding a chunk of chunkSize
// records when needed; 0 when that would pass max. Index 0 is reserved.
func allocRec[T any](chunks *[][]T, n, free *uint32, max uint32, next func(uint32) uint32) uint32 {
	if *free != 0 {
		i := *free
		*free = next(i)
		return i
	}
	if *n == 0 {
		*n = 1
	}
	if *n > max {
		return 0
	}
	i := *n
	*n++
	if int(i>>chunkBits) == len(*chunks) {
		*chunks = append(*chunks, make([]T, chunkSize))
	}
	return i
}

// releaseSession frees session i. With dirty set, the change log still names
// it, so it waits on the pending list until the next Drain.
func (st *userState) releaseSession(i uint32, dirty bool) {
	s := st.session(i)
	s.user = 0
	if dirty {
		s.next = st.pendingFree
		st.pendingFree = i
		return
	}
	s.next = st.freeSess
	st.freeSess = i
}

func (st *userState) wheelSlot(expiry int64) uint32 {
	t := floorDiv(expiry, st.tickMs)
	if t < st.nextTick {
		t = st.nextTick // already (partly) processed: catch it on the next Expire
	}
	return uint32(uint64(t) & st.wheelMask)
}

func (st *userState) linkWheel(i uint32) {
	s := st.session(i)
	slot := st.wheelSlot(s.expiry())
	head := st.wheel[slot]
	s.wprev = wheelHead | slot
	s.wnext = head
	if head != 0 {
		st.session(head).wprev = i
	}
	st.wheel[slot] = i
}

func (st *userState) unlinkWheel(i uint32) {
	s := st.session(i)
	p, n := s.wprev, s.wnext
	if p&wheelHead != 0 {
		st.wheel[p&^wheelHead] = n
	} else {
		st.session(p).wnext = n
	}
	if n != 0 {
		st.session(n).wprev = p
	}
	s.wprev, s.wnext = 0, 0
}

// logUpsert records that session i changed, once per Drain.
func (st *userState) logUpsert(i uint32) {
	s := st.session(i)
	if s.ttl&sessDirty != 0 {
		return
	}
	s.ttl |= sessDirty
	st.changes = append(st.changes, changeRec{sess: i})
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
