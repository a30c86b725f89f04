package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// Version 2 (PROTOCOL.md section 3): the whole datagram is signed with a
// client key derived from the token, so its op, ids and sequence number
// cannot be changed or replayed from elsewhere. One token serves all items.
//
//	magic | 0x02 | flags | count | seq (4) | timestamp ms (8) |
//	tokenLen (1) | token | items (op, userLen, user, roomLen, room)... | mac (16)
//
// With FlagConn each item also has connLen (1) and conn after its room.
//
// mac is the first 16 bytes of HMAC-SHA256(client key, every byte before it).
const (
	Version2    = 0x02
	HeaderLenV2 = HeaderLen + 8 // v1 header and the timestamp
	MACLen      = 16
)

// decodeV2 is Decode for a v2 request; the checks follow the same table.
func (d *Datagram) decodeV2(b []byte) error {
	if len(b) < HeaderLenV2 {
		return ErrTooShort
	}
	if b[2]&^requestFlags != 0 {
		return ErrBadFlags
	}
	count := int(b[3])
	if count == 0 || count > MaxItems {
		return ErrBadCount
	}
	withConn := b[2]&FlagConn != 0
	token, p, err := readField(b[HeaderLenV2:])
	if err != nil {
		return err
	}
	for i := range count {
		op, user, room, conn, rest, err := readItemIDs(p, withConn)
		if err != nil {
			return err
		}
		d.items[i] = Item{Op: op, User: user, Room: room, Conn: conn, Token: token}
		p = rest
	}
	if len(p) < MACLen {
		return ErrTruncated
	}
	if err := checkItems(d.items[:count]); err != nil {
		return err
	}
	if len(p) != MACLen {
		return ErrTrailing
	}
	d.Seq = binary.BigEndian.Uint32(b[4:8])
	d.Ack = b[2]&FlagAck != 0
	d.Version, d.TimestampMs = Version2, binary.BigEndian.Uint64(b[8:16])
	d.signed, d.mac = b[:len(b)-MACLen], b[len(b)-MACLen:]
	d.n, d.size = count, len(b)
	return nil
}

// VerifyMAC reports whether a decoded v2 request is signed with key, in
// constant time. It is false for a v1 request.
func (d *Datagram) VerifyMAC(key []byte) bool {
	if d.n == 0 || d.Version != Version2 {
		return false
	}
	want := mac(key, d.signed)
	return hmac.Equal(want[:MACLen], d.mac)
}

// mac returns HMAC-SHA256(key, msg) for msg of at most MaxDatagram bytes.
// It builds the padded blocks on the stack and hashes them with
// sha256.Sum256 (as the token package does), so it allocates nothing.
func mac(key, msg []byte) [sha256.Size]byte {
	var k [sha256.BlockSize]byte
	if len(key) > sha256.BlockSize {
		sum := sha256.Sum256(key)
		copy(k[:], sum[:])
	} else {
		copy(k[:], key)
	}
	var in [sha256.BlockSize + MaxDatagram]byte
	for i := range k {
		in[i] = k[i] ^ 0x36
	}
	n := sha256.BlockSize + copy(in[sha256.BlockSize:], msg)
	inner := sha256.Sum256(in[:n])
	var out [sha256.BlockSize + sha256.Size]byte
	for i := range k {
		out[i] = k[i] ^ 0x5c
	}
	copy(out[sha256.BlockSize:], inner[:])
	return sha256.Sum256(out[:])
}

// RequestLenV2 returns the encoded size of a v2 request with token and items.
func RequestLenV2(token []byte, items []Item) int {
	n := HeaderLenV2 + 1 + len(token) + MACLen
	withConn := hasConn(items)
	for i := range items {
		n += 3 + len(items[i].User) + len(items[i].Room)
		if withConn {
			n += 1 + len(items[i].Conn)
		}
	}
	return n
}

// AppendRequestV2 appends a v2 request signed with key (the token's client
// key) to dst, for clients. tsMs is the client's clock in unix ms. The
// items' Token fields are not used: token serves them all. It sets FlagConn
// exactly when an item names a connection. It returns dst unchanged and an
// error if the request would not decode.
func AppendRequestV2(dst []byte, seq uint32, ack bool, tsMs uint64, token, key []byte, items []Item) ([]byte, error) {
	if len(items) == 0 || len(items) > MaxItems {
		return dst, ErrBadCount
	}
	if len(token) > MaxTokenLen {
		return dst, ErrTokenTooLong
	}
	if err := checkItems(items); err != nil {
		return dst, err
	}
	if RequestLenV2(token, items) > MaxDatagram {
		return dst, ErrTooLarge
	}
	withConn := hasConn(items)
	start := len(dst)
	dst = append(dst, Magic, Version2, requestFlagsByte(ack, withConn), byte(len(items)))
	dst = binary.BigEndian.AppendUint32(dst, seq)
	dst = binary.BigEndian.AppendUint64(dst, tsMs)
	dst = append(dst, byte(len(token)))
	dst = append(dst, token...)
	for i := range items {
		dst = appendItemIDs(dst, &items[i], withConn)
	}
	m := mac(key, dst[start:])
	return append(dst, m[:MACLen]...), nil
}
