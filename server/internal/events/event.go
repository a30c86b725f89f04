package events

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// Type is what an event says happened.
type Type uint8

// Event types, as they appear in the "type" field and the SSE event line.
const (
	Join Type = iota + 1
	Leave
	Update
	Reset
	Occupied
	Vacated
	Occupancy
)

var typeNames = [...]string{Join: "join", Leave: "leave", Update: "update", Reset: "reset",
	Occupied: "occupied", Vacated: "vacated", Occupancy: "occupancy"}

func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "unknown"
}

// ParseType is the inverse of Type.String; it returns 0 for an unknown name.
func ParseType(s string) Type {
	for t, n := range typeNames {
		if n == s && n != "" {
			return Type(t)
		}
	}
	return 0
}

// Reasons carried by leave and reset events.
const (
	ReasonLeft        = "left"
	ReasonTimeout     = "timeout"
	ReasonDisconnect  = "disconnect"
	ReasonHistoryLost = "history_lost"
)

// ID orders events: Ms then Seq. On a single node Ms is the time the node
// started (its history's epoch) and Seq counts events from 1; in a cluster
// an ID is the Redis Stream entry id of the event. Both render as
// "<ms>-<seq>", the form of a Redis Stream id.
type ID struct{ Ms, Seq uint64 }

// Less reports whether id sorts before o.
func (id ID) Less(o ID) bool { return id.Ms < o.Ms || id.Ms == o.Ms && id.Seq < o.Seq }

// IsZero reports whether id is the zero ID (no event).
func (id ID) IsZero() bool { return id == ID{} }

// AppendTo appends the "<ms>-<seq>" form of id to b.
func (id ID) AppendTo(b []byte) []byte {
	b = strconv.AppendUint(b, id.Ms, 10)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Seq, 10)
}

func (id ID) String() string { return string(id.AppendTo(nil)) }

// ParseID parses "<ms>-<seq>" (or "<ms>", seq 0).
func ParseID(s string) (ID, bool) {
	ms, seq := s, ""
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			ms, seq = s[:i], s[i+1:]
			break
		}
	}
	a, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		return ID{}, false
	}
	var b uint64
	if seq != "" {
		if b, err = strconv.ParseUint(seq, 10, 64); err != nil {
			return ID{}, false
		}
	}
	return ID{a, b}, true
}

// Event is one presence event, immutable once published: the bus hands the
// same *Event to every subscriber.
type Event struct {
	ID   ID
	Type Type
	User string
	Room string
	At   int64 // unix ms when it happened (not when it was delivered)
	// Reason is set on leave (left, timeout, disconnect) and reset events.
	Reason string
	// State is the session's state (a JSON object) on join and update, or nil.
	State json.RawMessage
	// Online, Joined and Left are set on occupancy events.
	Online, Joined, Left int64
	// Conn is, on an update, the connection that started, ended or changed
	// its state (ConnChange says which), and on a join the member's first
	// connection when it is a named one. Connections are, on such an
	// update, the member's connections after the change.
	Conn        string
	ConnChange  ConnChange
	Connections []Conn

	data []byte // the JSON object, rendered once by the bus
}

// ConnChange says what happened to the connection an event names.
type ConnChange uint8

// What a connection did; the debounce holds ConnEnded like a leave.
const (
	ConnNone ConnChange = iota
	ConnStarted
	ConnEnded
	ConnChanged
)

// Conn is one connection of a member, as update events carry it.
type Conn struct {
	Conn  string          `json:"conn"`
	State json.RawMessage `json:"state"`
}

// wireEvent is the JSON form of an Event (README "Events").
type wireEvent struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	User   string          `json:"user,omitempty"`
	Room   *string         `json:"room,omitempty"`
	At     string          `json:"at,omitempty"`
	Reason string          `json:"reason,omitempty"`
	State  json.RawMessage `json:"state,omitempty"`
	Online *int64          `json:"online,omitempty"`
	Joined *int64          `json:"joined,omitempty"`
	Left   *int64          `json:"left,omitempty"`
	Conn   string          `json:"conn,omitempty"`
	Conns  []Conn          `json:"connections,omitempty"`
}

// JSON returns the event as a JSON object. For a published event it is
// rendered once and shared: the caller must not modify it.
func (e *Event) JSON() []byte {
	if e.data != nil {
		return e.data
	}
	return e.render()
}

func (e *Event) render() []byte {
	w := wireEvent{ID: e.ID.String(), Type: e.Type.String(), Reason: e.Reason}
	if e.Type != Reset {
		w.User = e.User
		room := e.Room
		w.Room = &room
		w.At = time.UnixMilli(e.At).UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	switch e.Type {
	case Join, Update:
		w.State = ValidUTF8(e.State)
		if w.State == nil {
			w.State = json.RawMessage("null")
		}
		w.Conn, w.Conns = e.Conn, e.Connections
		for i := range w.Conns {
			if w.Conns[i].State == nil {
				w.Conns[i].State = json.RawMessage("null")
			}
		}
	case Occupancy, Occupied, Vacated:
		w.User = ""
		w.Online, w.Joined, w.Left = &e.Online, &e.Joined, &e.Left
		if e.Type != Occupancy {
			w.Joined, w.Left = nil, nil
		}
	}
	b, err := json.Marshal(&w)
	if err != nil { // only State can fail, and it is validated before it gets here
		w.State = json.RawMessage("null")
		b, _ = json.Marshal(&w)
	}
	return b
}

// eventOverhead is an Event's memory besides its strings: the struct
// (about 200 bytes) and the allocator's rounding of its parts.
const eventOverhead = 256

// Size estimates the memory an event held in the history costs: its user,
// room, state and rendered JSON, and eventOverhead. BENCHMARKS.md ("Event
// memory") compares it with the measured figures.
func (e *Event) Size() int64 {
	return int64(eventOverhead + len(e.User) + len(e.Room) + cap(e.State) + cap(e.data))
}

// ValidUTF8 returns b (a state, or an event's JSON) with every run of bytes
// that are not UTF-8 replaced by U+FFFD; b itself (no copy) when it is
// valid, as every state this release accepts is. A state stored by an
// earlier release, or by such a node through Redis, may not be, and one bad
// byte in a WebSocket text frame makes a browser drop the socket.
func ValidUTF8(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	return bytes.ToValidUTF8(b, []byte("\uFFFD"))
}

// AppendSSE appends the event as one server-sent event: id, event and data lines.
func (e *Event) AppendSSE(b []byte) []byte {
	b = append(b, "id: "...)
	b = e.ID.AppendTo(b)
	b = append(b, "\nevent: "...)
	b = append(b, e.Type.String()...)
	b = append(b, "\ndata: "...)
	b = append(b, e.JSON()...)
	return append(b, "\n\n"...)
}
