package server

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

// A small JSON reader for the heartbeat bodies, so the HTTP heartbeat path
// allocates nothing: strings come back as sub-slices of the body, or of a
// scratch buffer when they hold escapes. The scratch buffer must have a
// capacity of at least len(body) before parsing starts (a decoded string is
// never longer than its encoding), so it never grows and earlier sub-slices
// stay valid. Everything that is not a heartbeat body is read with
// encoding/json.

var errSyntax = errors.New("malformed JSON")

type jsonReader struct {
	b       []byte
	i       int
	scratch []byte
}

func (r *jsonReader) reset(body, scratch []byte) {
	r.b, r.i = body, 0
	if cap(scratch) < len(body) {
		scratch = make([]byte, 0, len(body))
	}
	r.scratch = scratch[:0]
}

func (r *jsonReader) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (r *jsonReader) peek() byte {
	r.ws()
	if r.i < len(r.b) {
		return r.b[r.i]
	}
	return 0
}

func (r *jsonReader) expect(c byte) bool {
	if r.peek() != c {
		return false
	}
	r.i++
	return true
}

// end reports whether only whitespace is left.
func (r *jsonReader) end() bool { r.ws(); return r.i == len(r.b) }

// str reads a JSON string and returns its decoded bytes.
func (r *jsonReader) str() ([]byte, error) {
	if !r.expect('"') {
		return nil, errSyntax
	}
	start := r.i
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			s := r.b[start:r.i]
			r.i++
			return s, nil
		case c == '\\':
			return r.strEscaped(start)
		case c < 0x20:
			return nil, errSyntax
		}
		r.i++
	}
	return nil, errSyntax
}

// strEscaped continues str from the first backslash, decoding into scratch.
func (r *jsonReader) strEscaped(start int) ([]byte, error) {
	s0 := len(r.scratch)
	r.scratch = append(r.scratch, r.b[start:r.i]...)
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return r.scratch[s0:len(r.scratch):len(r.scratch)], nil
		case c < 0x20:
			return nil, errSyntax
		case c != '\\':
			r.scratch = append(r.scratch, c)
			r.i++
			continue
		}
		if r.i+1 >= len(r.b) {
			return nil, errSyntax
		}
		e := r.b[r.i+1]
		r.i += 2
		switch e {
		case '"', '\\', '/':
			r.scratch = append(r.scratch, e)
		case 'b':
			r.scratch = append(r.scratch, '\b')
		case 'f':
			r.scratch = append(r.scratch, '\f')
		case 'n':
			r.scratch = append(r.scratch, '\n')
		case 'r':
			r.scratch = append(r.scratch, '\r')
		case 't':
			r.scratch = append(r.scratch, '\t')
		case 'u':
			cp, ok := r.hex4()
			if !ok {
				return nil, errSyntax
			}
			if utf16.IsSurrogate(cp) {
				// Only a high surrogate escape directly followed by a low
				// one is a character. A lone one is refused rather than
				// replaced by U+FFFD, so two different bodies never name
				// the same id.
				if r.i+1 >= len(r.b) || r.b[r.i] != '\\' || r.b[r.i+1] != 'u' {
					return nil, errSyntax
				}
				r.i += 2
				cp2, ok := r.hex4()
				if !ok {
					return nil, errSyntax
				}
				if cp = utf16.DecodeRune(cp, cp2); cp == utf8.RuneError {
					return nil, errSyntax
				}
			}
			r.scratch = utf8.AppendRune(r.scratch, cp)
		default:
			return nil, errSyntax
		}
	}
	return nil, errSyntax
}

func (r *jsonReader) hex4() (rune, bool) {
	if r.i+4 > len(r.b) {
		return 0, false
	}
	var v rune
	for _, c := range r.b[r.i : r.i+4] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	r.i += 4
	return v, true
}

// skip skips any JSON value, nested at most 64 deep.
func (r *jsonReader) skip(depth int) error {
	if depth > 64 {
		return errSyntax
	}
	switch c := r.peek(); {
	case c == '"':
		_, err := r.str()
		return err
	case c == '{':
		r.i++
		if r.expect('}') {
			return nil
		}
		for {
			if _, err := r.str(); err != nil {
				return err
			}
			if !r.expect(':') {
				return errSyntax
			}
			if err := r.skip(depth + 1); err != nil {
				return err
			}
			if r.expect(',') {
				continue
			}
			if r.expect('}') {
				return nil
			}
			return errSyntax
		}
	case c == '[':
		r.i++
		if r.expect(']') {
			return nil
		}
		for {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
			if r.expect(',') {
				continue
			}
			if r.expect(']') {
				return nil
			}
			return errSyntax
		}
	case c == 't':
		return r.lit("true")
	case c == 'f':
		return r.lit("false")
	case c == 'n':
		return r.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return r.number()
	default:
		return errSyntax
	}
}

func (r *jsonReader) lit(s string) error {
	if len(r.b)-r.i < len(s) || string(r.b[r.i:r.i+len(s)]) != s {
		return errSyntax
	}
	r.i += len(s)
	return nil
}

func (r *jsonReader) number() error {
	start := r.i
	if r.i < len(r.b) && r.b[r.i] == '-' {
		r.i++
	}
	digits := func() int {
		n := 0
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
			n++
		}
		return n
	}
	if r.i < len(r.b) && r.b[r.i] == '0' {
		r.i++
	} else if digits() == 0 {
		return errSyntax
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return errSyntax
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return errSyntax
		}
	}
	if r.i == start {
		return errSyntax
	}
	return nil
}

// heartbeatFields is one decoded {"user","room","token"} object. The byte
// slices alias the body or the reader's scratch buffer.
type heartbeatFields struct {
	user, room, token []byte
	hasUser           bool
	// state is the raw "state" value (a JSON object) and hasState whether
	// the key was there: with hasState and a nil state, "state": null
	// clears it; without hasState the session keeps its state.
	state    []byte
	hasState bool
	// fieldErr names a field of the wrong JSON type; the object is
	// otherwise well-formed, so a batch can reject just this item.
	fieldErr string
}

// object reads one heartbeat object into hb. A syntax error fails the whole
// body; a field of the wrong type is recorded in hb.fieldErr.
func (r *jsonReader) object(hb *heartbeatFields) error {
	*hb = heartbeatFields{}
	if !r.expect('{') {
		return errSyntax
	}
	if r.expect('}') {
		return nil
	}
	for {
		key, err := r.str()
		if err != nil {
			return err
		}
		if !r.expect(':') {
			return errSyntax
		}
		var dst *[]byte
		switch string(key) {
		case "state":
			hb.hasState = true
			switch r.peek() {
			case '{':
				start := r.i
				if err := r.skip(0); err != nil {
					return err
				}
				hb.state = r.b[start:r.i]
			case 'n':
				if err := r.lit("null"); err != nil {
					return err
				}
				hb.state = nil
			default:
				if err := r.skip(0); err != nil {
					return err
				}
				if hb.fieldErr == "" {
					hb.fieldErr = "state must be a JSON object or null"
				}
			}
			if r.expect(',') {
				continue
			}
			if r.expect('}') {
				return nil
			}
			return errSyntax
		case "user":
			dst = &hb.user
			hb.hasUser = true
		case "room":
			dst = &hb.room
		case "token":
			dst = &hb.token
		}
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
			if dst == &hb.user {
				hb.hasUser = false
			}
		default:
			if err := r.skip(0); err != nil {
				return err
			}
			if hb.fieldErr == "" {
				hb.fieldErr = string(key) + " must be a string"
			}
		}
		if r.expect(',') {
			continue
		}
		if r.expect('}') {
			return nil
		}
		return errSyntax
	}
}

// parseHeartbeat reads a whole single-heartbeat body.
func parseHeartbeat(r *jsonReader, body []byte, scratch []byte, hb *heartbeatFields) error {
	r.reset(body, scratch)
	if err := r.object(hb); err != nil {
		return err
	}
	if !r.end() {
		return errSyntax
	}
	return nil
}

// errTooMany is returned by parseBatch when the batch exceeds its limit.
var errTooMany = errors.New("too many items")

// parseBatch reads {"heartbeats":[...]} into items (reused), failing with
// errTooMany past max items. Unknown top-level keys are skipped.
func parseBatch(r *jsonReader, body []byte, scratch []byte, items []heartbeatFields, max int) ([]heartbeatFields, error) {
	r.reset(body, scratch)
	items = items[:0]
	if !r.expect('{') {
		return items, errSyntax
	}
	seen := false
	if r.expect('}') {
		return items, errMissingHeartbeats
	}
	for {
		key, err := r.str()
		if err != nil {
			return items, err
		}
		if !r.expect(':') {
			return items, errSyntax
		}
		if string(key) != "heartbeats" {
			if err := r.skip(0); err != nil {
				return items, err
			}
		} else {
			seen = true
			items = items[:0]
			if !r.expect('[') {
				if r.peek() == 'n' || r.peek() == '{' || r.peek() == '"' {
					return items, errMissingHeartbeats
				}
				return items, errSyntax
			}
			if !r.expect(']') {
				for {
					if len(items) == max {
						return items, errTooMany
					}
					items = append(items, heartbeatFields{})
					if err := r.object(&items[len(items)-1]); err != nil {
						return items, err
					}
					if r.expect(',') {
						continue
					}
					if r.expect(']') {
						break
					}
					return items, errSyntax
				}
			}
		}
		if r.expect(',') {
			continue
		}
		if r.expect('}') {
			break
		}
		return items, errSyntax
	}
	if !r.end() {
		return items, errSyntax
	}
	if !seen {
		return items, errMissingHeartbeats
	}
	return items, nil
}

var errMissingHeartbeats = errors.New(`"heartbeats" must be an array`)

// appendJSONString appends s as a JSON string, escaping as encoding/json
// does (invalid UTF-8 becomes U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendTime appends t (unix ms) as an RFC 3339 UTC string with milliseconds,
// or null when t is 0.
func appendTime(b []byte, ms int64) []byte {
	if ms <= 0 {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = timeFromMs(ms).AppendFormat(b, rfc3339Milli)
	return append(b, '"')
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

// hasLoneSurrogate reports whether a JSON text escapes a UTF-16 surrogate
// that is not one half of a pair (`"\ud800"`, `"\udc00\u0041"`), which
// encoding/json would turn into U+FFFD. Bodies read with encoding/json are
// checked with it so that they refuse what jsonReader refuses. A backslash
// only occurs inside strings in valid JSON, so no string tracking is needed.
func hasLoneSurrogate(b []byte) bool {
	var r jsonReader
	r.b = b
	for r.i < len(b) {
		if b[r.i] != '\\' || r.i+1 >= len(b) {
			r.i++
			continue
		}
		esc := b[r.i+1]
		r.i += 2
		if esc != 'u' {
			continue
		}
		cp, ok := r.hex4()
		if !ok || !utf16.IsSurrogate(cp) {
			continue
		}
		if r.i+1 >= len(b) || b[r.i] != '\\' || b[r.i+1] != 'u' {
			return true
		}
		r.i += 2
		cp2, ok := r.hex4()
		if !ok || utf16.DecodeRune(cp, cp2) == utf8.RuneError {
			return true
		}
	}
	return false
}
