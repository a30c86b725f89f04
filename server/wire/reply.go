package wire

import "encoding/binary"

// Status is the outcome of one item, one byte in a reply. Clients must treat
// a code they do not know as a failure of that item.
type Status uint8

// Status codes. Codes 1..5 mean the item will keep failing until the client
// fixes it (new id or token); 6..9 are worth retrying later.
const (
	StatusOK           Status = 0 // heartbeat or leave applied
	StatusBadID        Status = 1 // user or room rejected by the server's id rules
	StatusBadToken     Status = 2 // token missing, malformed or wrongly signed
	StatusTokenExpired Status = 3 // genuine token past its expiry: mint a new one
	StatusUnknownKey   Status = 4 // token names a key id the server does not hold
	StatusWrongRoom    Status = 5 // room-bound token used without a room
	StatusRateLimited  Status = 6 // too many heartbeats from this user or source
	StatusTooManyRooms Status = 7 // the user is in as many rooms as the server allows
	StatusUnavailable  Status = 8 // server starting, draining or overloaded
	StatusTooManyConns Status = 9 // the session has as many connections as the server allows
)

var statusNames = [...]string{
	StatusOK:           "ok",
	StatusBadID:        "bad_id",
	StatusBadToken:     "bad_token",
	StatusTokenExpired: "token_expired",
	StatusUnknownKey:   "unknown_key",
	StatusWrongRoom:    "wrong_room",
	StatusRateLimited:  "rate_limited",
	StatusTooManyRooms: "too_many_rooms",
	StatusUnavailable:  "unavailable",
	StatusTooManyConns: "too_many_conns",
}

// String returns the status's name, e.g. "token_expired", or "unknown".
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "unknown"
}

// ReplyLen returns the size of a reply to count items, with or without the
// timing fields.
func ReplyLen(count int, timing bool) int {
	n := HeaderLen + count
	if timing {
		n += TimingLen
	}
	return n
}

// AppendReply appends the reply to req, a successfully decoded request, to
// dst: one status per item, in item order, and the heartbeat interval and
// session TTL in milliseconds. The timing fields are sent only when
// intervalMs or ttlMs is non-zero and the reply still fits in req.Size()
// bytes; otherwise they are left out (FlagTiming clear).
//
// The reply is never larger than the request. AppendReply returns dst
// unchanged and an error (ErrNoRequest, ErrStatusCount, ErrReplyTooLarge)
// rather than break that rule. It does not allocate if dst has room.
func AppendReply(dst []byte, req *Datagram, statuses []Status, intervalMs, ttlMs uint32) ([]byte, error) {
	if req.n == 0 {
		return dst, ErrNoRequest
	}
	if len(statuses) != req.n {
		return dst, ErrStatusCount
	}
	timing := (intervalMs != 0 || ttlMs != 0) && ReplyLen(req.n, true) <= req.size
	if ReplyLen(req.n, timing) > req.size {
		return dst, ErrReplyTooLarge
	}
	flags := byte(FlagReply)
	if timing {
		flags |= FlagTiming
	}
	dst = append(dst, Magic, req.Version, flags, byte(req.n))
	dst = binary.BigEndian.AppendUint32(dst, req.Seq)
	for _, s := range statuses {
		dst = append(dst, byte(s))
	}
	if timing {
		dst = binary.BigEndian.AppendUint32(dst, intervalMs)
		dst = binary.BigEndian.AppendUint32(dst, ttlMs)
	}
	return dst, nil
}

// Reply is a decoded reply, for clients. Reuse one: Decode overwrites it and
// allocates nothing.
type Reply struct {
	Seq        uint32 // the seq of the request this answers
	HasTiming  bool   // IntervalMs and TTLMs were sent
	IntervalMs uint32 // how often to send heartbeats
	TTLMs      uint32 // how long a session lives after its last heartbeat

	n        int
	statuses [MaxItems]Status
}

// Statuses returns one status per item of the request, in item order (none
// after a failed Decode). The slice is valid until the next Decode.
func (r *Reply) Statuses() []Status { return r.statuses[:r.n] }

// Decode parses and validates a whole reply datagram.
func (r *Reply) Decode(b []byte) error {
	r.n = 0
	r.HasTiming, r.IntervalMs, r.TTLMs = false, 0, 0
	if len(b) > MaxDatagram {
		return ErrTooLarge
	}
	if len(b) < HeaderLen {
		return ErrTooShort
	}
	if b[0] != Magic {
		return ErrBadMagic
	}
	if b[1] != Version && b[1] != Version2 {
		return ErrBadVersion
	}
	flags := b[2]
	if flags&FlagReply == 0 || flags&^(FlagReply|FlagTiming) != 0 {
		return ErrBadFlags
	}
	count := int(b[3])
	if count == 0 || count > MaxItems {
		return ErrBadCount
	}
	timing := flags&FlagTiming != 0
	want := ReplyLen(count, timing)
	if len(b) < want {
		return ErrTruncated
	}
	if len(b) > want {
		return ErrTrailing
	}
	for i := range count {
		r.statuses[i] = Status(b[HeaderLen+i])
	}
	if timing {
		t := b[HeaderLen+count:]
		r.IntervalMs = binary.BigEndian.Uint32(t)
		r.TTLMs = binary.BigEndian.Uint32(t[4:])
	}
	r.Seq = binary.BigEndian.Uint32(b[4:8])
	r.HasTiming = timing
	r.n = count
	return nil
}
