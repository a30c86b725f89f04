package jsonbody

import (
	"unicode/utf16"
	"unicode/utf8"
)

// reader is a cursor over one JSON text. Strings come back as sub-slices of
// the text, or of scratch when they hold escapes: scratch has a capacity of
// at least len(b) before reading starts (a decoded string is never longer
// than its encoding), so it never grows and earlier sub-slices stay valid.
type reader struct {
	b       []byte
	i       int
	scratch []byte
}

// reset starts reading body, keeping the scratch buffer of earlier bodies
// when it is big enough.
func (r *reader) reset(body []byte) {
	r.b, r.i = body, 0
	if cap(r.scratch) < len(body) {
		r.scratch = make([]byte, 0, len(body))
	}
	r.scratch = r.scratch[:0]
}

func (r *reader) ws() {
	// The loops over bytes keep the position in a local and store it once:
	// r.i in the loop costs a store per byte (BenchmarkParse).
	i := r.i
	for i < len(r.b) {
		switch r.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			r.i = i
			return
		}
	}
	r.i = i
}

// peek returns the next non-space byte, or 0 at the end.
func (r *reader) peek() byte {
	r.ws()
	if r.i < len(r.b) {
		return r.b[r.i]
	}
	return 0
}

func (r *reader) expect(c byte) bool {
	if r.peek() != c {
		return false
	}
	r.i++
	return true
}

// end reports whether only whitespace is left.
func (r *reader) end() bool { r.ws(); return r.i == len(r.b) }

// str reads a JSON string and returns its decoded bytes.
func (r *reader) str() ([]byte, error) {
	if !r.expect('"') {
		return nil, ErrSyntax
	}
	start := r.i
	for i := start; i < len(r.b); i++ {
		switch c := r.b[i]; {
		case c == '"':
			r.i = i + 1
			return r.b[start:i], nil
		case c == '\\':
			r.i = i
			return r.strEscaped(start)
		case c < 0x20:
			return nil, ErrSyntax
		}
	}
	return nil, ErrSyntax
}

// strEscaped continues str from the first backslash, decoding into scratch.
func (r *reader) strEscaped(start int) ([]byte, error) {
	s0 := len(r.scratch)
	r.scratch = append(r.scratch, r.b[start:r.i]...)
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return r.scratch[s0:len(r.scratch):len(r.scratch)], nil
		case c < 0x20:
			return nil, ErrSyntax
		case c != '\\':
			r.scratch = append(r.scratch, c)
			r.i++
			continue
		}
		if r.i+1 >= len(r.b) {
			return nil, ErrSyntax
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
				return nil, ErrSyntax
			}
			if utf16.IsSurrogate(cp) {
				// Only a high surrogate escape directly followed by a low
				// one is a character. A lone one is refused rather than
				// replaced by U+FFFD, so two different bodies never name
				// the same id.
				if r.i+1 >= len(r.b) || r.b[r.i] != '\\' || r.b[r.i+1] != 'u' {
					return nil, ErrSyntax
				}
				r.i += 2
				cp2, ok := r.hex4()
				if !ok {
					return nil, ErrSyntax
				}
				if cp = utf16.DecodeRune(cp, cp2); cp == utf8.RuneError {
					return nil, ErrSyntax
				}
			}
			r.scratch = utf8.AppendRune(r.scratch, cp)
		default:
			return nil, ErrSyntax
		}
	}
	return nil, ErrSyntax
}

func (r *reader) hex4() (rune, bool) {
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

// MaxDepth is how deeply a value the parser skips (an unknown field, a
// state object) may nest: a value inside more than MaxDepth arrays and
// objects below the field is a syntax error, so a hostile body cannot
// recurse without bound.
const MaxDepth = 64

// skip skips any JSON value, nested at most MaxDepth deep.
func (r *reader) skip(depth int) error {
	if depth > MaxDepth {
		return ErrTooDeep
	}
	switch c := r.peek(); {
	case c == '"':
		_, err := r.str()
		return err
	case c == '{':
		r.i++
		return r.members(func([]byte) error { return r.skip(depth + 1) })
	case c == '[':
		r.i++
		return r.elements(func() error { return r.skip(depth + 1) })
	case c == 't':
		return r.lit("true")
	case c == 'f':
		return r.lit("false")
	case c == 'n':
		return r.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return r.number()
	default:
		return ErrSyntax
	}
}

// CheckDepth reports whether v is one JSON value nested at most MaxDepth
// deep, as a state in a body must be: nil, ErrTooDeep or ErrSyntax. It is
// for values read by another parser (the WebSocket's encoding/json).
func CheckDepth(v []byte) error {
	var r reader
	r.reset(v)
	if err := r.skip(0); err != nil {
		return err
	}
	if !r.end() {
		return ErrSyntax
	}
	return nil
}

// members reads an object's members after its '{', through its '}':
// member is called after each key and its colon, and reads the value.
func (r *reader) members(member func(key []byte) error) error {
	if r.expect('}') {
		return nil
	}
	for {
		key, err := r.str()
		if err != nil {
			return err
		}
		if !r.expect(':') {
			return ErrSyntax
		}
		if err := member(key); err != nil {
			return err
		}
		if r.expect(',') {
			continue
		}
		if r.expect('}') {
			return nil
		}
		return ErrSyntax
	}
}

// elements reads an array's elements after its '[', through its ']':
// element reads each one.
func (r *reader) elements(element func() error) error {
	if r.expect(']') {
		return nil
	}
	for {
		if err := element(); err != nil {
			return err
		}
		if r.expect(',') {
			continue
		}
		if r.expect(']') {
			return nil
		}
		return ErrSyntax
	}
}

func (r *reader) lit(s string) error {
	if len(r.b)-r.i < len(s) || string(r.b[r.i:r.i+len(s)]) != s {
		return ErrSyntax
	}
	r.i += len(s)
	return nil
}

func (r *reader) number() error {
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
		return ErrSyntax
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return ErrSyntax
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return ErrSyntax
		}
	}
	if r.i == start {
		return ErrSyntax
	}
	return nil
}
