package shardmap

// arena interns ids (1..128 bytes) in one []byte. Each id takes a chunk of
// its length rounded up to 8 bytes; freed chunks go to a free list per size
// class and are reused by ids of the same class. When more than half the
// arena is free, the owner compacts it (see compact), so the arena follows the
// live set rather than its history.
type arena struct {
	buf       []byte
	free      [arenaClasses + 1][]uint32 // offsets of free chunks, by class
	freeBytes int
}

const (
	arenaClasses    = MaxIDLen / 8
	arenaCompactMin = 4 << 10 // do not bother compacting smaller arenas
)

var arenaPad [8]byte

func arenaClass(n int) int { return (n + 7) >> 3 }

func (a *arena) bytes(off uint32, n uint8) []byte {
	return a.buf[off : off+uint32(n) : off+uint32(n)]
}

// alloc copies b (1..128 bytes) into the arena and returns its offset.
func (a *arena) alloc(b []byte) uint32 {
	c := arenaClass(len(b))
	if l := a.free[c]; len(l) > 0 {
		off := l[len(l)-1]
		a.free[c] = l[:len(l)-1]
		a.freeBytes -= c << 3
		copy(a.buf[off:], b)
		return off
	}
	off := len(a.buf)
	a.buf = growBytes(a.buf, c<<3)
	a.buf = append(a.buf, b...)
	a.buf = append(a.buf, arenaPad[:c<<3-len(b)]...)
	return uint32(off)
}

// release returns the chunk at off holding n bytes to its free list.
func (a *arena) release(off uint32, n uint8) {
	c := arenaClass(int(n))
	a.free[c] = append(a.free[c], off)
	a.freeBytes += c << 3
}

func (a *arena) needsCompact() bool {
	return len(a.buf) >= arenaCompactMin && a.freeBytes > len(a.buf)/2
}

// compact moves the live chunks to the front of the arena. live holds
// off<<32|idx for every live id, sorted by offset; lenOf gives the id length
// of idx and setOff records its new offset. The free lists are dropped and
// an oversized buffer is reallocated smaller.
func (a *arena) compact(live []uint64, lenOf func(idx uint32) uint8, setOff func(idx, off uint32)) {
	w := 0
	for _, p := range live {
		off, idx := int(p>>32), uint32(p)
		n := arenaClass(int(lenOf(idx))) << 3
		copy(a.buf[w:w+n], a.buf[off:off+n])
		setOff(idx, uint32(w))
		w += n
	}
	a.buf = a.buf[:w]
	for c := range a.free {
		a.free[c] = nil
	}
	a.freeBytes = 0
	if cap(a.buf) >= arenaCompactMin && cap(a.buf) > 4*w {
		nb := make([]byte, w, 2*w)
		copy(nb, a.buf)
		a.buf = nb
	}
}

// growBytes makes room for n more bytes, growing by 1/8 rather than
// append's 1/4 or more: the arena is a large share of the heap per session,
// and copies are rare (amortized 8 bytes moved per byte added).
func growBytes(b []byte, n int) []byte {
	if len(b)+n <= cap(b) {
		return b
	}
	nb := make([]byte, len(b), len(b)+n+max(len(b)/8, 256))
	copy(nb, b)
	return nb
}
