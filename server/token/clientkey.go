package token

import "crypto/sha256"

// clientKeyPrefix versions the client-key derivation (PROTOCOL.md, section 3).
const clientKeyPrefix = "presenced-client-key-v1\n"

// ClientKeyLen is the size of a client key.
const ClientKeyLen = sha256.Size

// ClientKey returns the key a client signs v2 datagrams with:
//
//	HMAC-SHA256(secret of the token's kid, "presenced-client-key-v1\n" + token)
//
// The backend that minted tok hands it to the client with the token, over
// its own authenticated channel; it never travels in a datagram, so a
// captured datagram (which carries the token) does not let anyone sign
// another. ClientKey checks only that tok has a valid key id the keyring
// holds (ErrMalformed, ErrUnknownKey); Verify checks the rest. It allocates
// nothing.
func (kr *Keyring) ClientKey(tok []byte) ([ClientKeyLen]byte, error) {
	var out [ClientKeyLen]byte
	if len(tok) > MaxTokenLen {
		return out, ErrMalformed
	}
	i := 0
	for i < len(tok) && tok[i] != '.' {
		i++
	}
	if i == len(tok) || !validKeyID(tok[:i]) {
		return out, ErrMalformed
	}
	k := kr.lookup(tok[:i])
	if k == nil {
		return out, ErrUnknownKey
	}
	var in [sha256.BlockSize + len(clientKeyPrefix) + MaxTokenLen]byte
	n := copy(in[:], k.ipad[:])
	n += copy(in[n:], clientKeyPrefix)
	n += copy(in[n:], tok)
	inner := sha256.Sum256(in[:n])
	var o [sha256.BlockSize + sha256.Size]byte
	copy(o[:], k.opad[:])
	copy(o[sha256.BlockSize:], inner[:])
	return sha256.Sum256(o[:]), nil
}
