package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"time"

	"github.com/presenced/presenced/server/wire"
)

// Limits of the token format.
const (
	MaxKeyIDLen  = 16  // bytes in a key id
	MaxIDLen     = 128 // bytes in a user or room id
	MaxExpDigits = 18  // decimal digits in the expiry
	SigLen       = 43  // base64url, unpadded, of a 32-byte HMAC-SHA256
	// MaxTokenLen is the longest valid token text, in bytes.
	MaxTokenLen = MaxKeyIDLen + 1 + MaxExpDigits + 1 + 1 + 1 + SigLen
)

// Scopes.
const (
	ScopeUser = 'u' // valid for the user in any room (and with no room)
	ScopeRoom = 'r' // valid for the user in one room only
)

// msgPrefix versions the signed message.
const msgPrefix = "presenced-token-v1\n"

const maxMsgLen = len(msgPrefix) + MaxKeyIDLen + 1 + MaxExpDigits + 1 + 1 + 1 + MaxIDLen + 1 + MaxIDLen

var b64 = base64.RawURLEncoding

// sign returns HMAC-SHA256(secret, msg) for the token fields. It assembles
// the padded inner and outer blocks on the stack and hashes them with
// sha256.Sum256, which is what keeps Verify free of allocations (a pooled
// hash.Hash would make its arguments escape). Lengths must already be
// checked: the buffers are sized for the format's limits.
func (k *key) sign(exp []byte, scope byte, user, room []byte) [sha256.Size]byte {
	var in [sha256.BlockSize + maxMsgLen]byte
	n := copy(in[:], k.ipad[:])
	n += copy(in[n:], msgPrefix)
	n += copy(in[n:], k.id)
	in[n] = '\n'
	n++
	n += copy(in[n:], exp)
	in[n] = '\n'
	in[n+1] = scope
	in[n+2] = '\n'
	n += 3
	n += copy(in[n:], user)
	in[n] = '\n'
	n++
	if scope == ScopeRoom {
		n += copy(in[n:], room)
	}
	inner := sha256.Sum256(in[:n])

	var out [sha256.BlockSize + sha256.Size]byte
	copy(out[:], k.opad[:])
	copy(out[sha256.BlockSize:], inner[:])
	return sha256.Sum256(out[:])
}

// Mint returns a token for user, valid until exp, signed with the key kid
// ("" means the signing key). With bindRoom the token is valid only for room
// (scope "r", room must not be empty); without it the token is valid for the
// user in any room (scope "u") and room is ignored.
func (kr *Keyring) Mint(kid string, user, room string, bindRoom bool, exp time.Time) (string, error) {
	if kid == "" {
		kid = kr.SigningKeyID()
	}
	k := kr.lookup([]byte(kid))
	if k == nil {
		return "", fmt.Errorf("cannot mint token: key %q: %w", kid, ErrUnknownKey)
	}
	if !validID([]byte(user), false) {
		return "", fmt.Errorf("cannot mint token: user: %w", ErrBadID)
	}
	scope := byte(ScopeUser)
	if bindRoom {
		scope = ScopeRoom
		if !validID([]byte(room), false) {
			return "", fmt.Errorf("cannot mint token: room: %w", ErrBadID)
		}
	} else {
		room = ""
	}
	e := exp.Unix()
	if e <= 0 || e > 999_999_999_999_999_999 {
		return "", fmt.Errorf("cannot mint token: expiry %d is out of range 1..%d digits of unix seconds", e, MaxExpDigits)
	}
	var expBuf [MaxExpDigits]byte
	expText := strconv.AppendInt(expBuf[:0], e, 10)
	sig := k.sign(expText, scope, []byte(user), []byte(room))

	b := make([]byte, 0, MaxTokenLen)
	b = append(b, kid...)
	b = append(b, '.')
	b = append(b, expText...)
	b = append(b, '.', scope, '.')
	b = b64.AppendEncode(b, sig[:])
	return string(b), nil
}

// Verify checks that tok is a genuine, unexpired token for user in room at
// time nowUnix (unix seconds; a token is valid while nowUnix < exp). An empty
// room means "no room" (a room-less heartbeat or a leave of all rooms).
//
// It returns nil or one of ErrBadID, ErrMalformed, ErrUnknownKey,
// ErrWrongRoom, ErrBadSignature, ErrExpired, checked in that order, so
// ErrExpired is only returned for genuine tokens. It allocates nothing, keeps
// no reference to its arguments and compares signatures in constant time.
func (kr *Keyring) Verify(tok, user, room []byte, nowUnix int64) error {
	if !validID(user, false) || !validID(room, true) {
		return ErrBadID
	}
	if len(tok) > MaxTokenLen {
		return ErrMalformed
	}
	// kid
	i := 0
	for i < len(tok) && tok[i] != '.' {
		i++
	}
	kid := tok[:i]
	if i == len(tok) || !validKeyID(kid) {
		return ErrMalformed
	}
	rest := tok[i+1:]
	// exp
	i = 0
	var exp int64
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		exp = exp*10 + int64(rest[i]-'0') // cannot overflow: at most 18 digits
		i++
		if i > MaxExpDigits {
			return ErrMalformed
		}
	}
	if i == 0 || rest[0] == '0' || i+2 >= len(rest) || rest[i] != '.' {
		return ErrMalformed
	}
	expText := rest[:i]
	// scope
	scope := rest[i+1]
	if (scope != ScopeUser && scope != ScopeRoom) || rest[i+2] != '.' {
		return ErrMalformed
	}
	// sig
	sigText := rest[i+3:]
	if len(sigText) != SigLen || !validSig(sigText) {
		return ErrMalformed
	}
	var sig [sha256.Size]byte
	if _, err := b64.Decode(sig[:], sigText); err != nil {
		return ErrMalformed // unreachable: validSig checked the alphabet
	}

	k := kr.lookup(kid)
	if k == nil {
		return ErrUnknownKey
	}
	if scope == ScopeRoom && len(room) == 0 {
		return ErrWrongRoom
	}
	want := k.sign(expText, scope, user, room)
	if !hmac.Equal(want[:], sig[:]) {
		return ErrBadSignature
	}
	if nowUnix >= exp {
		return ErrExpired
	}
	return nil
}

// validSig reports whether s is 43 bytes of the base64url alphabet whose
// last character carries no stray low bits (so each signature has exactly
// one text form).
func validSig(s []byte) bool {
	for _, c := range s {
		if b64val(c) < 0 {
			return false
		}
	}
	return b64val(s[len(s)-1])&3 == 0
}

func b64val(c byte) int {
	switch {
	case c >= 'A' && c <= 'Z':
		return int(c - 'A')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 26
	case c >= '0' && c <= '9':
		return int(c-'0') + 52
	case c == '-':
		return 62
	case c == '_':
		return 63
	}
	return -1
}

// validKeyID reports whether s is 1..MaxKeyIDLen bytes of [A-Za-z0-9_-].
func validKeyID(s []byte) bool {
	if len(s) == 0 || len(s) > MaxKeyIDLen {
		return false
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validID is the id rule of the whole server (wire.ValidID), so the token
// message cannot be made ambiguous with control characters.
var validID = wire.ValidID
