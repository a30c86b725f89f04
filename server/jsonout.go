package server

import "unicode/utf8"

// The writing half of the JSON bodies: the answers are built by appending
// to reused byte slices, so the heartbeat path allocates nothing. Bodies are
// read by server/internal/jsonbody (the heartbeat path) and encoding/json.

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
