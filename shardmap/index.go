package shardmap

import "math/bits"

// idIndex maps an id to its record index (1..MaxIndexed). It is an open
// addressing table with linear probing over a pointer-free []uint32 (0 is an
// empty slot); the probe sequence starts from a 24-bit tag of the id's hash,
// which the record itself keeps, so a slot costs 4 bytes (a
// map[uint64]uint32 costs about 20-40 bytes per entry). A slot holds the
// record index in its low 24 bits and the tag's low 8 bits above them, so a
// probe that passes another id's slot reads no record (255 times in 256): in
// a table far bigger than the CPU caches each record read is a cache miss,
// and at 3/4 load a lookup passes 1.5 other slots on average. Ids may share a
// tag (a hash collision): find asks the caller to compare the record, and
// probing goes on past a mismatch. Deletion shifts entries back (no
// tombstones). The table grows at 3/4 load and shrinks below 1/8, so it
// follows the live set.
type idIndex struct {
	slots []uint32
	shift uint
	n     int
}

const idxMinSlots = 16

// maxIndexed is the largest record index an idIndex slot holds.
const maxIndexed = 1<<24 - 1

// slotOf is the slot value of record idx with tag tag.
func slotOf(idx, tag uint32) uint32 { return idx | (tag&0xff)<<24 }

// tagOf is the index tag of an id hash: its top 24 bits.
func tagOf(h uint64) uint32 { return uint32(h >> 40) }

func (x *idIndex) home(tag uint32) int {
	return int((uint64(tag) * 0x9E3779B97F4A7C15) >> x.shift)
}

// find returns the first index in tag's probe sequence for which eq is true,
// or 0. eq must check the record's tag as well as its id.
func (x *idIndex) find(tag uint32, eq func(idx uint32) bool) uint32 {
	if x.n == 0 {
		return 0
	}
	mask := len(x.slots) - 1
	t := (tag & 0xff) << 24
	for i := x.home(tag); ; i = (i + 1) & mask {
		v := x.slots[i]
		if v == 0 {
			return 0
		}
		if v&^maxIndexed == t && eq(v&maxIndexed) {
			return v & maxIndexed
		}
	}
}

// insert adds idx, whose tag is tag; tagOf gives the tag of any indexed record.
func (x *idIndex) insert(idx, tag uint32, tagOf func(idx uint32) uint32) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.resize(max(idxMinSlots, 2*len(x.slots)), tagOf)
	}
	x.put(idx, tag)
	x.n++
}

func (x *idIndex) put(idx, tag uint32) {
	mask := len(x.slots) - 1
	for i := x.home(tag); ; i = (i + 1) & mask {
		if x.slots[i] == 0 {
			x.slots[i] = slotOf(idx, tag)
			return
		}
	}
}

// remove deletes idx, which must be present with tag tag.
func (x *idIndex) remove(idx, tag uint32, tagOf func(idx uint32) uint32) {
	mask := len(x.slots) - 1
	i := x.home(tag)
	for x.slots[i]&maxIndexed != idx {
		i = (i + 1) & mask
	}
	for j := i; ; {
		j = (j + 1) & mask
		w := x.slots[j]
		if w == 0 {
			break
		}
		// w may fill the hole at i unless its home lies cyclically in (i, j].
		k := x.home(tagOf(w & maxIndexed))
		if (i <= j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			x.slots[i] = w
			i = j
		}
	}
	x.slots[i] = 0
	x.n--
	if len(x.slots) > idxMinSlots && x.n*8 < len(x.slots) {
		x.resize(len(x.slots)/2, tagOf)
	}
}

func (x *idIndex) resize(size int, tagOf func(idx uint32) uint32) {
	old := x.slots
	x.slots = make([]uint32, size)
	x.shift = 64 - uint(bits.TrailingZeros(uint(size)))
	for _, v := range old {
		if v != 0 {
			x.put(v&maxIndexed, tagOf(v&maxIndexed))
		}
	}
}
