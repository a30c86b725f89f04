package cluster

import (
	"encoding/binary"

	"github.com/presenced/presenced/shardmap"
)

// The writer's byte-buffer records: the intake (changes queued by Offer and
// OfferLeave) and the deferred-refresh ring. Both are pointer-free byte
// slices; each has one append/read pair so no offset is computed by hand
// elsewhere.

// changeKind is what an intake record asks of the writer.
type changeKind uint8

const (
	// changeUpsert: a session of this node started or was refreshed.
	changeUpsert changeKind = iota + 1
	// changeLocalLeave: a session of this node ended by an explicit leave.
	changeLocalLeave
	// changeLocalExpiry: a session of this node timed out locally. It
	// writes nothing: Redis expires the session itself unless another node
	// keeps it alive.
	changeLocalExpiry
	// changeLeave: a cluster-wide explicit leave of one room (OfferLeave).
	changeLeave
	// changeLeaveAll: a cluster-wide explicit leave of every room of a user.
	changeLeaveAll
	// changeRetryTouch: a TOUCH that failed, sent again (before the
	// re-assert, so a join still gets its event).
	changeRetryTouch
	// changeLocalDisconnect: changeLocalLeave whose WebSocket closed (reason disconnect).
	changeLocalDisconnect
	// changeDisconnect: changeLeave whose WebSocket closed (OfferDisconnect).
	changeDisconnect
	// changeRetryUpdate: changeRetryTouch of a state change (its update
	// event is emitted when the session was not new).
	changeRetryUpdate
)

// leaveReason is the reason of the leave event a leave record emits.
func (k changeKind) leaveReason() shardmap.Reason {
	if k == changeLocalDisconnect || k == changeDisconnect {
		return shardmap.ReasonDisconnect
	}
	return shardmap.ReasonLeft
}

// change is one decoded intake record. user and room alias the buffer.
type change struct {
	kind                 changeKind
	lastSeen, expiry, at int64
	user, room           []byte
	state                []byte // upsert and retried touch: the session's state, or empty
}

// changeHeader is kind(1) lastSeen(8) expiry(8) at(8) ulen(1) rlen(1) slen(2).
const changeHeader = 1 + 8 + 8 + 8 + 1 + 1 + 2

// appendChange encodes c at the end of b. Ids are at most 255 bytes.
func appendChange(b []byte, c *change) []byte {
	b = append(b, byte(c.kind))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.lastSeen))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.expiry))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.at))
	b = append(b, byte(len(c.user)), byte(len(c.room)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(c.state)))
	b = append(b, c.user...)
	b = append(b, c.room...)
	return append(b, c.state...)
}

// readChange decodes the record at the start of b and returns the rest.
func readChange(b []byte) (c change, rest []byte) {
	c.kind = changeKind(b[0])
	c.lastSeen = int64(binary.LittleEndian.Uint64(b[1:]))
	c.expiry = int64(binary.LittleEndian.Uint64(b[9:]))
	c.at = int64(binary.LittleEndian.Uint64(b[17:]))
	ul, rl := int(b[25]), int(b[26])
	sl := int(binary.LittleEndian.Uint16(b[27:]))
	b = b[changeHeader:]
	c.user, c.room = b[:ul:ul], b[ul:ul+rl:ul+rl]
	if sl > 0 {
		c.state = b[ul+rl : ul+rl+sl : ul+rl+sl]
	}
	return c, b[ul+rl+sl:]
}

// deferred is one record of the deferred-refresh ring: the session's state
// key and the due time the refresh was filed for.
type deferred struct {
	hash       uint64
	due        int64
	user, room []byte
}

// deferredHeader is hash(8) due(8) ulen(1) rlen(1).
const deferredHeader = 8 + 8 + 1 + 1

func appendDeferred(b []byte, d *deferred) []byte {
	b = binary.LittleEndian.AppendUint64(b, d.hash)
	b = binary.LittleEndian.AppendUint64(b, uint64(d.due))
	b = append(b, byte(len(d.user)), byte(len(d.room)))
	b = append(b, d.user...)
	return append(b, d.room...)
}

func readDeferred(b []byte) (d deferred, rest []byte) {
	d.hash = binary.LittleEndian.Uint64(b)
	d.due = int64(binary.LittleEndian.Uint64(b[8:]))
	ul, rl := int(b[16]), int(b[17])
	b = b[deferredHeader:]
	d.user, d.room = b[:ul:ul], b[ul:ul+rl:ul+rl]
	return d, b[ul+rl:]
}

// opKind is what one Redis write does.
type opKind uint8

const (
	opTouch  opKind = iota + 1 // TOUCH: a join or refresh, events for joins
	opAssert                   // re-assert: TOUCH without events
	opLeave                    // LEAVE: an explicit leave, with its event
)
