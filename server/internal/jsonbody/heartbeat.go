package jsonbody

// Heartbeat is one decoded {"user","room","token","state"} object, the body
// of a heartbeat or a leave, or one item of a batch. Its slices alias the
// body or the Parser's scratch buffer (see the package doc).
type Heartbeat struct {
	// User, Room and Token are the decoded strings; nil when the key is
	// absent or null.
	User, Room, Token []byte
	// Conn is the decoded "conn" (the connection the heartbeat or leave
	// speaks for); nil when absent or null: the default connection.
	Conn []byte
	// State is the raw "state" value (a JSON object, as it appears in the
	// body) and HasState whether the key was there: with HasState and a
	// nil State, "state": null clears the state; without HasState the
	// session keeps its state.
	State    []byte
	HasState bool
	// FieldErr names the first field of the wrong JSON type ("user must be
	// a string"); the object is otherwise well-formed.
	FieldErr string
}

// Parser reads heartbeat bodies. The zero value is ready to use; reuse it
// so that its scratch buffer is reused too. It is not safe for concurrent
// use.
type Parser struct {
	r reader
}

// Heartbeat reads a whole single-heartbeat (or leave) body into hb. It
// returns ErrSyntax for a malformed body; a field of the wrong type is not
// an error but hb.FieldErr.
func (p *Parser) Heartbeat(body []byte, hb *Heartbeat) error {
	p.r.reset(body)
	if err := p.r.object(hb); err != nil {
		return err
	}
	if !p.r.end() {
		return ErrSyntax
	}
	return nil
}

// Batch reads {"heartbeats":[...]} into items (reused from its first
// element, and returned), failing with ErrTooMany past max items,
// ErrMissingHeartbeats without the array, and ErrSyntax for a malformed
// body. Unknown top-level keys are skipped; when "heartbeats" repeats, the
// last array counts. The error is the first met in the body's order.
func (p *Parser) Batch(body []byte, items []Heartbeat, max int) ([]Heartbeat, error) {
	r := &p.r
	r.reset(body)
	items = items[:0]
	if !r.expect('{') {
		return items, ErrSyntax
	}
	if r.expect('}') {
		return items, ErrMissingHeartbeats
	}
	seen := false
	err := r.members(func(key []byte) error {
		if string(key) != "heartbeats" {
			return r.skip(0)
		}
		seen = true
		items = items[:0]
		if !r.expect('[') {
			if r.peek() == 'n' || r.peek() == '{' || r.peek() == '"' {
				return ErrMissingHeartbeats
			}
			return ErrSyntax
		}
		return r.elements(func() error {
			if len(items) == max {
				return ErrTooMany
			}
			items = append(items, Heartbeat{})
			return r.object(&items[len(items)-1])
		})
	})
	if err != nil {
		return items, err
	}
	if !r.end() {
		return items, ErrSyntax
	}
	if !seen {
		return items, ErrMissingHeartbeats
	}
	return items, nil
}

// object reads one heartbeat object into hb. A syntax error fails the whole
// body; a field of the wrong type is recorded in hb.FieldErr.
func (r *reader) object(hb *Heartbeat) error {
	*hb = Heartbeat{}
	if !r.expect('{') {
		return ErrSyntax
	}
	return r.members(func(key []byte) error {
		if string(key) == "state" {
			return r.stateMember(hb)
		}
		return r.stringMember(hb, key)
	})
}

// stateMember reads the value of member "state": an object (kept as
// raw bytes) or null; anything else is a field error.
func (r *reader) stateMember(hb *Heartbeat) error {
	hb.HasState = true
	switch r.peek() {
	case '{':
		start := r.i
		if err := r.skip(0); err != nil {
			return err
		}
		hb.State = r.b[start:r.i]
	case 'n':
		if err := r.lit("null"); err != nil {
			return err
		}
		hb.State = nil
	default:
		if err := r.skip(0); err != nil {
			return err
		}
		hb.wrongType([]byte("state"))
	}
	return nil
}

// stringMember reads the value of member key: a string (or null) for a
// string field, skipped for any other member.
func (r *reader) stringMember(hb *Heartbeat, key []byte) error {
	dst := hb.stringField(key)
	var err error
	switch {
	case dst == nil:
		if err := r.skip(0); err != nil {
			return err
		}
	case r.peek() == '"':
		if *dst, err = r.str(); err != nil {
			return err
		}
	case r.peek() == 'n':
		if err := r.lit("null"); err != nil {
			return err
		}
		*dst = nil
	default:
		if err := r.skip(0); err != nil {
			return err
		}
		hb.wrongType(key)
	}
	return nil
}

// stringField is where the string member key of a heartbeat object goes
// (user, room, token, conn), or nil for any other member.
func (hb *Heartbeat) stringField(key []byte) *[]byte {
	switch string(key) {
	case "user":
		return &hb.User
	case "room":
		return &hb.Room
	case "token":
		return &hb.Token
	case "conn":
		return &hb.Conn
	}
	return nil
}

// wrongType records member key as the first of the wrong JSON type.
func (hb *Heartbeat) wrongType(key []byte) {
	if hb.FieldErr != "" {
		return
	}
	if string(key) == "state" {
		hb.FieldErr = "state must be a JSON object or null"
		return
	}
	hb.FieldErr = string(key) + " must be a string"
}
