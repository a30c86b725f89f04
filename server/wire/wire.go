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
	MaxConnLen  = 64  // bytes in a connection id
	MaxTokenLen = 255 // bytes in a token

	// TimingLen is the size of the optional interval_ms and ttl_ms fields
	// at the end of a reply.
	TimingLen = 8
)

// Flag bits of the header's flags byte.
const (
	FlagAck    = 0x01 // request: the client wants a reply
	FlagTiming = 0x02 // reply: interval_ms and ttl_ms follow the statuses
	FlagConn   = 0x04 // request: every item carries a connection id
	FlagReply  = 0x80 // set in replies, clear in requests

	// requestFlags are the bits a request may set (v1 and v2).
	requestFlags = FlagAck | FlagConn
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

// Item is one heartbeat or leave. In a decoded Datagram, User, Room, Conn
// and Token are sub-slices of the decoded buffer (capacity clipped to their
// length, so appending to one cannot overwrite the next).
type Item struct {
	Op   Op
	User []byte // 1..MaxIDLen bytes, see ValidID
	Room []byte // 0..MaxIDLen bytes; empty means no room (leave: all rooms)
	// Conn is the connection (a browser tab, a device) the item speaks
	// for: 0..MaxConnLen bytes under the id rules of ValidID. Empty means
	// the session's default connection; for a leave, all its connections.
	Conn  []byte
	Token []byte // 0..MaxTokenLen bytes, opaque to this package
}

// hasConn reports whether any item names a connection: the encoders set
// FlagConn exactly then.
func hasConn(items []Item) bool {
	for i := range items {
		if len(items[i].Conn) != 0 {
			return true
		}
	}
	return false
}

// validConn reports whether b is a valid connection id, or empty.
func validConn(b []byte) bool {
	return len(b) <= MaxConnLen && ValidID(b, true)
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
	if b[2]&^requestFlags != 0 {
		return ErrBadFlags
	}
	count := int(b[3])
	if count == 0 || count > MaxItems {
		return ErrBadCount
	}
	withConn := b[2]&FlagConn != 0
	// First the items' structure (lengths only), then their contents, so
	// that a bad datagram's reason is the first row of PROTOCOL.md's table
	// that it breaks, whichever item breaks it.
	p := b[HeaderLen:]
	for i := range count {
		op, user, room, conn, rest, err := readItemIDs(p, withConn)
		if err != nil {
			return err
		}
		token, rest, err := readField(rest)
		if err != nil {
			return err
		}
		d.items[i] = Item{Op: op, User: user, Room: room, Conn: conn, Token: token}
		p = rest
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
// length, user, room length, room and, with FlagConn, connection length and
// connection. It checks lengths only and returns the rest of p; the slices
// alias p.
func readItemIDs(p []byte, withConn bool) (op Op, user, room, conn, rest []byte, err error) {
	if len(p) < 1 {
		return 0, nil, nil, nil, nil, ErrTruncated
	}
	op = Op(p[0])
	if user, p, err = readField(p[1:]); err != nil {
		return 0, nil, nil, nil, nil, err
	}
	if room, p, err = readField(p); err != nil {
		return 0, nil, nil, nil, nil, err
	}
	if withConn {
		if conn, p, err = readField(p); err != nil {
			return 0, nil, nil, nil, nil, err
		}
	}
	return op, user, room, conn, p, nil
}

// readField reads one length-prefixed field (a length byte, then that many
// bytes) from p. The field's capacity is clipped to its length.
func readField(p []byte) (field, rest []byte, err error) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return nil, nil, ErrTruncated
	}
	n := 1 + int(p[0])
	return p[1:n:n], p[n:], nil
}

// checkItems checks the ops, then the ids, of structurally whole items.
func checkItems(items []Item) error {
	for i := range items {
		if items[i].Op != OpHeartbeat && items[i].Op != OpLeave {
			return ErrBadOp
		}
	}
	for i := range items {
		if !ValidID(items[i].User, false) || !ValidID(items[i].Room, true) || !validConn(items[i].Conn) {
			return ErrBadID
		}
	}
	return nil
}

// RequestLen returns the encoded size of a request carrying items.
func RequestLen(items []Item) int {
	n := HeaderLen
	withConn := hasConn(items)
	for i := range items {
		n += 4 + len(items[i].User) + len(items[i].Room) + len(items[i].Token)
		if withConn {
			n += 1 + len(items[i].Conn)
		}
	}
	return n
}

// AppendRequest appends a request datagram to dst, for clients. It sets
// FlagConn exactly when an item names a connection. It checks everything
// Decode checks and returns dst unchanged with the same errors (plus
// ErrTokenTooLong) if the request would not decode.
func AppendRequest(dst []byte, seq uint32, ack bool, items []Item) ([]byte, error) {
	if len(items) == 0 || len(items) > MaxItems {
		return dst, ErrBadCount
	}
	if err := checkItems(items); err != nil {
		return dst, err
	}
	for i := range items {
		if len(items[i].Token) > MaxTokenLen {
			return dst, ErrTokenTooLong
		}
	}
	if RequestLen(items) > MaxDatagram {
		return dst, ErrTooLarge
	}
	withConn := hasConn(items)
	dst = append(dst, Magic, Version, requestFlagsByte(ack, withConn), byte(len(items)))
	dst = binary.BigEndian.AppendUint32(dst, seq)
	for i := range items {
		it := &items[i]
		dst = appendItemIDs(dst, it, withConn)
		dst = append(dst, byte(len(it.Token)))
		dst = append(dst, it.Token...)
	}
	return dst, nil
}

// requestFlagsByte is a request's flags byte.
func requestFlagsByte(ack, withConn bool) byte {
	var flags byte
	if ack {
		flags |= FlagAck
	}
	if withConn {
		flags |= FlagConn
	}
	return flags
}

// appendItemIDs appends what readItemIDs reads.
func appendItemIDs(dst []byte, it *Item, withConn bool) []byte {
	dst = append(dst, byte(it.Op), byte(len(it.User)))
	dst = append(dst, it.User...)
	dst = append(dst, byte(len(it.Room)))
	dst = append(dst, it.Room...)
	if withConn {
		dst = append(dst, byte(len(it.Conn)))
		dst = append(dst, it.Conn...)
	}
	return dst
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
