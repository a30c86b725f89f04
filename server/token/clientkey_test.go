package token

import (
	"encoding/hex"
	"errors"
	"testing"
)

// The worked example of PROTOCOL.md section 3, computed with Python's hmac.
func TestClientKey(t *testing.T) {
	kr, err := ParseKeyring([]byte("k1 0123456789abcdef0123456789abcdef\n"))
	if err != nil {
		t.Fatal(err)
	}
	tok := []byte("k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U")
	k, err := kr.ClientKey(tok)
	if err != nil || hex.EncodeToString(k[:]) != "988b52f76ac1ecf594bf8fcd11dada820baca9b3a78788ce6ec5b2ddcf23c6ae" {
		t.Fatalf("ClientKey = %x, %v", k, err)
	}
	for in, want := range map[string]error{
		"k9.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U": ErrUnknownKey,
		"nodot":    ErrMalformed,
		"bad!.1.u": ErrMalformed,
		"":         ErrMalformed,
	} {
		if _, err := kr.ClientKey([]byte(in)); !errors.Is(err, want) {
			t.Errorf("ClientKey(%q) = %v, want %v", in, err, want)
		}
	}
	if a := testing.AllocsPerRun(100, func() { _, _ = kr.ClientKey(tok) }); a != 0 {
		t.Errorf("ClientKey allocates %v", a)
	}
}
