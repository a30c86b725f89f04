package jsonbody

import (
	"unicode/utf16"
	"unicode/utf8"
)

// HasLoneSurrogate reports whether a JSON text escapes a UTF-16 surrogate
// that is not one half of a pair (`"\ud800"`, `"\udc00\u0041"`), which
// encoding/json would turn into U+FFFD. Bodies read with encoding/json are
// checked with it so that they refuse what Parser refuses. A backslash
// only occurs inside strings in valid JSON, so no string tracking is needed.
func HasLoneSurrogate(b []byte) bool {
	var r reader
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
