package persist

import (
	"encoding/binary"
	"io"

	"github.com/cockroachdb/pebble/v2"
)

// Key tags; see the layout in doc.go.
const (
	tagMarker   = 'm'
	tagSession  = 's'
	tagLastSeen = 'u'
	tagQueue    = 'q'
)

var (
	markerKey     = []byte("munclean")
	sessionLower  = []byte{tagSession}
	sessionUpper  = []byte{tagSession + 1}
	lastSeenLower = []byte{tagLastSeen}
	lastSeenUpper = []byte{tagLastSeen + 1}
)

// maxUserLen is the longest user id the one-byte length in a session key can
// carry; the HTTP and UDP contracts cap ids at 128 bytes (wire.ValidID).
const maxUserLen = 255

func appendSessionKey(dst, user, room []byte) []byte {
	dst = append(dst, tagSession, byte(len(user)))
	dst = append(dst, user...)
	return append(dst, room...)
}

func decodeSessionKey(k []byte) (user, room []byte, ok bool) {
	if len(k) < 2 || k[0] != tagSession {
		return nil, nil, false
	}
	n := int(k[1])
	if n == 0 || len(k) < 2+n {
		return nil, nil, false
	}
	return k[2 : 2+n], k[2+n:], true
}

// appendSessionValue encodes a session record: last seen and expiry (8
// bytes each, big-endian), then the session's state, if any (the rest): a
// JSON object, or for a session with named connections their durable form
// (shardmap.IsConns: it starts with 0x00, which no JSON text does).
func appendSessionValue(dst []byte, lastSeen, expiry int64, state []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(lastSeen))
	dst = binary.BigEndian.AppendUint64(dst, uint64(expiry))
	return append(dst, state...)
}

func decodeSessionValue(v []byte) (lastSeen, expiry int64, state []byte, ok bool) {
	if len(v) < 16 {
		return 0, 0, nil, false
	}
	if len(v) > 16 {
		state = v[16:]
	}
	return int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:])), state, true
}

func appendLastSeenKey(dst, user []byte) []byte {
	dst = append(dst, tagLastSeen)
	return append(dst, user...)
}

func appendMillis(dst []byte, ms int64) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(ms))
}

func decodeMillis(v []byte) (int64, bool) {
	if len(v) != 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(v)), true
}

// lastSeenMerger keeps the largest of the 8-byte big-endian operands, so
// last-seen never moves backwards whatever order writes arrive in. Its name
// is stored by Pebble: changing it makes existing stores fail to open.
var lastSeenMerger = &pebble.Merger{
	Name: "presenced.lastseen.max.v1",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		m := &maxMerger{}
		m.add(value)
		return m, nil
	},
}

type maxMerger struct {
	max int64
	set bool
	buf [8]byte
}

func (m *maxMerger) add(v []byte) {
	// A malformed operand (none is ever written) is ignored rather than
	// failing reads and compactions.
	if x, ok := decodeMillis(v); ok && (!m.set || x > m.max) {
		m.max, m.set = x, true
	}
}

func (m *maxMerger) MergeNewer(v []byte) error { m.add(v); return nil }
func (m *maxMerger) MergeOlder(v []byte) error { m.add(v); return nil }
func (m *maxMerger) Finish(bool) ([]byte, io.Closer, error) {
	binary.BigEndian.PutUint64(m.buf[:], uint64(m.max))
	return m.buf[:], nil, nil
}
