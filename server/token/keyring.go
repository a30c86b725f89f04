package token

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
)

// MinSecretLen is the shortest secret a keyring accepts, in bytes.
const MinSecretLen = 32

// Keyring holds the HMAC secrets, each under its key id. The first key in the
// file signs new tokens; every key verifies. A Keyring is immutable and safe
// for concurrent use.
type Keyring struct {
	keys []key
}

// key is one secret, kept as the HMAC-SHA256 inner and outer padded blocks
// (RFC 2104) so that signing needs no per-call key setup.
type key struct {
	id   string
	ipad [sha256.BlockSize]byte
	opad [sha256.BlockSize]byte
}

func newKey(id string, secret []byte) key {
	k := key{id: id}
	if len(secret) > sha256.BlockSize {
		sum := sha256.Sum256(secret)
		secret = sum[:]
	}
	copy(k.ipad[:], secret)
	copy(k.opad[:], secret)
	for i := range k.ipad {
		k.ipad[i] ^= 0x36
		k.opad[i] ^= 0x5c
	}
	return k
}

// LoadKeyring reads a keyring file; see ParseKeyring for its format.
func LoadKeyring(path string) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot load keyring: %w", err)
	}
	kr, err := ParseKeyring(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return kr, nil
}

// ParseKeyring parses a keyring file: one key per line, "<kid> <secret>",
// where kid is 1..16 bytes of [A-Za-z0-9_-] and the secret is the rest of the
// line with surrounding spaces, tabs and CR removed, at least MinSecretLen
// bytes, used as raw bytes. Blank lines and lines starting with '#' are
// ignored. A duplicate kid, or a file with no key, is an error. The first key
// is the signing key.
func ParseKeyring(data []byte) (*Keyring, error) {
	kr := &Keyring{}
	seen := make(map[string]bool)
	for n, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.Trim(line, " \t\r")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		sep := bytes.IndexAny(line, " \t")
		if sep < 0 {
			return nil, fmt.Errorf("cannot parse keyring: line %d: want \"<kid> <secret>\"", n+1)
		}
		kid, secret := line[:sep], bytes.Trim(line[sep:], " \t\r")
		if !validKeyID(kid) {
			return nil, fmt.Errorf("cannot parse keyring: line %d: key id must be 1..%d bytes of [A-Za-z0-9_-]", n+1, MaxKeyIDLen)
		}
		if len(secret) < MinSecretLen {
			return nil, fmt.Errorf("cannot parse keyring: line %d: secret of key %q is %d bytes, want at least %d", n+1, kid, len(secret), MinSecretLen)
		}
		if seen[string(kid)] {
			return nil, fmt.Errorf("cannot parse keyring: line %d: duplicate key id %q", n+1, kid)
		}
		seen[string(kid)] = true
		kr.keys = append(kr.keys, newKey(string(kid), secret))
	}
	if len(kr.keys) == 0 {
		return nil, fmt.Errorf("cannot parse keyring: no key")
	}
	return kr, nil
}

// SigningKeyID returns the id of the key Mint uses by default (the first).
func (kr *Keyring) SigningKeyID() string { return kr.keys[0].id }

// KeyIDs returns the key ids in file order.
func (kr *Keyring) KeyIDs() []string {
	ids := make([]string, len(kr.keys))
	for i := range kr.keys {
		ids[i] = kr.keys[i].id
	}
	return ids
}

// lookup finds a key by id; a keyring holds a handful of keys, so a linear
// scan beats a map and allocates nothing.
func (kr *Keyring) lookup(kid []byte) *key {
	for i := range kr.keys {
		if kr.keys[i].id == string(kid) {
			return &kr.keys[i]
		}
	}
	return nil
}
