package shardmap

import (
	"slices"
	"sync"
)

// roomShard is one shard of the global room table.
type roomShard struct {
	mu struct {
		sync.Mutex
		roomState
	}
	_ [64]byte // keep neighbouring locks off one cache line
}

// roomRec is one interned room. members holds one slot per session in the
// room: a packed user ref (see packRef) or, for a free slot, memberFree|next
// free slot+1. A session keeps its slot for its whole life, which is what
// makes the Members cursor stable.
type roomRec struct {
	members  []uint64
	off      uint32 // name in the arena
	online   uint32 // sessions (= distinct users) in the room
	freeSlot uint32 // first free slot + 1, 0 = none
	gen      uint32 // bumped when the record is freed
	tag      uint32 // index tag
	n        uint8  // name length; 0 = free record
}

// roomState is the part of a room shard guarded by its lock. Every method
// needs roomShard.mu held.
type roomState struct {
	index     idIndex
	arena     arena
	rooms     []roomRec // index 0 is reserved
	freeRooms []uint32
	scratch   []uint64
}

const (
	memberFree = uint64(1) << 63
	memberKeep = 64 // member arrays up to this cap are kept when a room is freed
)

// packRef packs a user reference for a member slot: generation (15 bits),
// user shard (16 bits), user index (32 bits).
func packRef(shard int, idx uint32, gen uint16) uint64 {
	return uint64(gen&0x7fff)<<48 | uint64(shard)<<32 | uint64(idx)
}

func unpackRef(r uint64) (shard int, idx uint32, gen uint16) {
	return int(r>>32) & 0xffff, uint32(r), uint16(r>>48) & 0x7fff
}

func (rs *roomState) name(ri uint32) []byte {
	r := &rs.rooms[ri]
	return rs.arena.bytes(r.off, r.n)
}

func (rs *roomState) find(h uint64, room []byte) uint32 {
	tag := tagOf(h)
	return rs.index.find(tag, func(ri uint32) bool {
		r := &rs.rooms[ri]
		return r.tag == tag && string(rs.arena.bytes(r.off, r.n)) == string(room)
	})
}

func (rs *roomState) roomTag(ri uint32) uint32 {
	return rs.rooms[ri].tag
}

// create interns room and returns its record index, or 0 if the shard is at
// maxIdx rooms.
func (rs *roomState) create(h uint64, room []byte, maxIdx uint32) uint32 {
	var ri uint32
	if n := len(rs.freeRooms); n > 0 {
		ri = rs.freeRooms[n-1]
		rs.freeRooms = rs.freeRooms[:n-1]
	} else {
		if len(rs.rooms) == 0 {
			rs.rooms = append(rs.rooms, roomRec{}) // reserve 0
		}
		if uint32(len(rs.rooms)) > maxIdx {
			return 0
		}
		ri = uint32(len(rs.rooms))
		rs.rooms = append(rs.rooms, roomRec{})
	}
	r := &rs.rooms[ri]
	r.off = rs.arena.alloc(room)
	r.n = uint8(len(room))
	r.tag = tagOf(h)
	rs.index.insert(ri, r.tag, rs.roomTag)
	return ri
}

// addMember takes a slot in room ri for ref and counts the member.
func (rs *roomState) addMember(ri uint32, ref uint64) uint32 {
	r := &rs.rooms[ri]
	r.online++
	if r.freeSlot != 0 {
		s := r.freeSlot - 1
		r.freeSlot = uint32(r.members[s])
		r.members[s] = ref
		return s
	}
	if len(r.members) == cap(r.members) {
		// Grow by 1/8: member slots are 8 bytes per session.
		ms := make([]uint64, len(r.members), len(r.members)+max(len(r.members)/8, 4))
		copy(ms, r.members)
		r.members = ms
	}
	r.members = append(r.members, ref)
	return uint32(len(r.members) - 1)
}

// removeMember frees slot in room ri and reports whether the room is now
// empty (the caller then frees it with free).
func (rs *roomState) removeMember(ri, slot uint32) (empty bool) {
	r := &rs.rooms[ri]
	r.members[slot] = memberFree | uint64(r.freeSlot)
	r.freeSlot = slot + 1
	r.online--
	return r.online == 0
}

// free releases the empty room ri.
func (rs *roomState) free(ri uint32) {
	r := &rs.rooms[ri]
	rs.index.remove(ri, r.tag, rs.roomTag)
	rs.arena.release(r.off, r.n)
	if cap(r.members) <= memberKeep {
		r.members = r.members[:0]
	} else {
		r.members = nil
	}
	r.n, r.off, r.freeSlot, r.online = 0, 0, 0, 0
	r.gen++
	rs.freeRooms = append(rs.freeRooms, ri)
	if rs.arena.needsCompact() {
		rs.compact()
	}
}

func (rs *roomState) compact() {
	live := rs.scratch[:0]
	for i := 1; i < len(rs.rooms); i++ {
		if r := &rs.rooms[i]; r.n != 0 {
			live = append(live, uint64(r.off)<<32|uint64(i))
		}
	}
	slices.Sort(live)
	rs.arena.compact(live,
		func(i uint32) uint8 { return rs.rooms[i].n },
		func(i, off uint32) { rs.rooms[i].off = off })
	rs.scratch = live[:0]
}
