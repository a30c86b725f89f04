package wire

import (
	"encoding/binary"
	"unicode/utf8"
)

// Format constants. See PROTOCOL.md.
const (
	Magic     = 0x50 // 'P'
	Version   = 0x01
	HeaderLen = 8 // magic, version, flags, count, seq (uint32, big-endian)

	// MaxDatagram is the largest datagram either side sends or accepts. It
	// fits the common 1500-byte Ethernet MTU with room for IPv6 (40), UDP (8)
	// and tunnel headers, so datagrams are never fragmented.
	MaxDatagram = 1400
	MaxItems    = 64  // items in one request
	MaxIDLen    = 128 // bytes in a user or room id
	MaxTokenLen = 255 // bytes in a token

	// TimingLen is the size of the optional interval_ms and ttl_ms fields
	// at the end of a reply.
	TimingLen = 8
)

// Flag bits of the header's flags byte.
const (
	FlagAck    = 0x01 // request: the client wants a reply
	FlagTiming = 0x02 // reply: interval_ms and ttl_ms follow the statuses
	FlagReply  = 0x80 // set in replies, clear in requests
)

// Op is what an item asks for.
type Op uint8

const (
	// OpHeartbeat creates or refreshes the session (user, room); an empty
	// room only says the user is online.
	OpHeartbeat Op = 1
	// OpLeave ends the session (user, room); an empty room ends all the
	// user's sessions.
	OpLeave Op = 2
)

func (op Op) String() string {
	switch op {
	case OpHeartbeat:
		return "heartbeat"
	case OpLeave:
		return "leave"
	}
	return "unknown"
}

// Item is one heartbeat or leave. In a decoded Datagram, User, Room and
// Token are sub-slices of the decoded buffer (capacity clipped to their
// length, so appending to one cannot overwrite the next).
type Item struct {
	Op    Op
	User  []byte // 1..MaxIDLen bytes, see ValidID
	Room  []byte // 0..MaxIDLen bytes; empty means no room (leave: all rooms)
	Token []byte // 0..MaxTokenLen bytes, opaque to this package
}

// Datagram is a decoded request. Reuse one per event loop: Decode
// overwrites it and allocates nothing.
type Datagram struct {
	Seq uint32 // echoed in the reply
	Ack bool   // the client wants a reply
	// Version is the request's version, Version or Version2; a reply
	// carries the same.
	Version byte
	// TimestampMs is a v2 request's client time (unix ms); 0 for v1.
	TimestampMs uint64

	signed, mac []byte // v2: the MAC'd bytes and the MAC

	n     int // items decoded; 0 unless the last Decode succeeded
	size  int // length of the decoded datagram
	items [MaxItems]Item
}

// Items returns the items of the last successful Decode (none after a failed
// one). The slice and the items' bytes are valid only until the next Decode
// and only while the decoded buffer is.
func (d *Datagram) Items() []Item { return d.items[:d.n] }

// Size returns the length in bytes of the last successfully decoded
// datagram, the bound on the size of its reply.
func (d *Datagram) Size() int { return d.size }

// Decode parses and validates a whole request datagram. On error the
// Datagram holds no items, so nothing of a bad datagram can be acted on.
func (d *Datagram) Decode(b []byte) error {
	d.n, d.size = 0, 0
	if len(b) > MaxDatagram {
		return ErrTooLarge
	}
	if len(b) < HeaderLen {
		return ErrTooShort
	}
	if b[0] != Magic {
		return ErrBadMagic
	}
	if b[1] == Version2 {
		return d.decodeV2(b)
	}
	if b[1] != Version {
		return ErrBadVersion
	}
	if b[2]&^FlagAck != 0 {
		return ErrBadFlags
	}
	count := int(b[3])
	if count == 0 || count > MaxItems {
		return ErrBadCount
	}
	// First the items' structure (lengths only), then their contents, so
	// that a bad datagram's reason is the first row of PROTOCOL.md's table
	// that it breaks, whichever item breaks it.
	p := b[HeaderLen:]
	for i := range count {
		op, user, room, rest, err := readItemIDs(p)
		if err != nil {
			return err
		}
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return ErrTruncated
		}
		tl := int(rest[0])
		d.items[i] = Item{Op: op, User: user, Room: room, Token: rest[1 : 1+tl : 1+tl]}
		p = rest[1+tl:]
	}
	if err := checkItems(d.items[:count]); err != nil {
		return err
	}
	if len(p) != 0 {
		return ErrTrailing
	}
	d.Seq = binary.BigEndian.Uint32(b[4:8])
	d.Ack = b[2]&FlagAck != 0
	d.Version, d.TimestampMs, d.signed, d.mac = Version, 0, nil, nil
	d.n, d.size = count, len(b)
	return nil
}

// readItemIDs reads the part of an item both versions share: op, user
// length, user, room length, room. It checks lengths only and returns the
// rest of p; the slices alias p.
func readItemIDs(p []byte) (op Op, user, room, rest []byte, err error) {
	if len(p) < 2 {
		return 0, nil, nil, nil, ErrTruncated
	}
	op, ul := Op(p[0]), int(p[1])
	p = p[2:]
	if len(p) < ul+1 {
		return 0, nil, nil, nil, ErrTruncated
	}
	user = p[:ul:ul]
	rl := int(p[ul])
	p = p[ul+1:]
	if len(p) < rl {
		return 0, nil, nil, nil, ErrTruncated
	}
	return op, user, p[:rl:rl], p[rl:], nil
}

// checkItems checks the ops, then the ids, of structurally whole items.
func checkItems(items []Item) error {
	for i := range items {
		if items[i].Op != OpHeartbeat && items[i].Op != OpLeave {
			return ErrBadOp
		}
	}
	for i := range items {
		if !ValidID(items[i].User, false) || !ValidID(items[i].Room, true) {
			return ErrBadID
		}
	}
	return nil
}

// RequestLen returns the encoded size of a request carrying items.
func RequestLen(items []Item) int {
	n := HeaderLen
	for i := range items {
		n += 4 + len(items[i].User) + len(items[i].Room) + len(items[i].Token)
	}
	return n
}

// AppendRequest appends a request datagram to dst, for clients. It checks
// everything Decode checks and returns dst unchanged with the same errors
// (plus ErrTokenTooLong) if the request would not decode.
func AppendRequest(dst []byte, seq uint32, ack bool, items []Item) ([]byte, error) {
	if len(items) == 0 || len(items) > MaxItems {
		return dst, ErrBadCount
	}
	for i := range items {
		it := &items[i]
		if it.Op != OpHeartbeat && it.Op != OpLeave {
			return dst, ErrBadOp
		}
		if !ValidID(it.User, false) || !ValidID(it.Room, true) {
			return dst, ErrBadID
		}
		if len(it.Token) > MaxTokenLen {
			return dst, ErrTokenTooLong
		}
	}
	if RequestLen(items) > MaxDatagram {
		return dst, ErrTooLarge
	}
	var flags byte
	if ack {
		flags |= FlagAck
	}
	dst = append(dst, Magic, Version, flags, byte(len(items)))
	dst = binary.BigEndian.AppendUint32(dst, seq)
	for i := range items {
		it := &items[i]
		dst = append(dst, byte(it.Op), byte(len(it.User)))
		dst = append(dst, it.User...)
		dst = append(dst, byte(len(it.Room)))
		dst = append(dst, it.Room...)
		dst = append(dst, byte(len(it.Token)))
		dst = append(dst, it.Token...)
	}
	return dst, nil
}

// ValidID reports whether b is a valid user or room id: 1..MaxIDLen bytes
// (or empty, if allowEmpty) of valid UTF-8 with no control character (bytes
// below 0x20, and 0x7f). It does not allocate.
func ValidID(b []byte, allowEmpty bool) bool {
	if len(b) == 0 {
		return allowEmpty
	}
	if len(b) > MaxIDLen {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return utf8.Valid(b)
}
