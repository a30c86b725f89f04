// Package token mints and verifies presenced heartbeat tokens.
//
// A token proves that the application's backend allowed a user (and, for
// room-bound tokens, one room) to send heartbeats until an expiry time. It is
// ASCII text, so it fits JSON bodies, query strings and UDP datagrams:
//
//	<kid>.<exp>.<scope>.<sig>
//
//	kid    key id, 1..16 bytes of [A-Za-z0-9_-]; names the secret in the keyring
//	exp    expiry, unix seconds, decimal, 1..18 digits, no leading zero
//	scope  "u" (the user, in any room) or "r" (the user, in one room)
//	sig    base64url without padding (43 bytes) of HMAC-SHA256(secret, msg)
//
//	msg = "presenced-token-v1\n" + kid + "\n" + exp + "\n" + scope + "\n" +
//	      user + "\n" + room             (room is "" for scope "u")
//
// PROTOCOL.md at the repository root is the normative description, with a
// Python example and test vectors (testdata/vectors.json) for backends in
// other languages.
//
// # Keys and rotation
//
// A Keyring holds the secrets, read from a file with one "<kid> <secret>"
// per line. The first key signs; every key verifies. To rotate, add the new
// key below the old one (all nodes now accept it), then move it to the top
// (new tokens use it), then remove the old key once the longest-lived token
// signed with it has expired.
//
// # Concurrency and allocation
//
// A Keyring is immutable after ParseKeyring and safe for concurrent use by
// any number of goroutines. Verify allocates nothing and does not keep any of
// the slices it is given, so callers may pass buffers that live only for a
// callback (gnet datagrams, fasthttp arguments).
package token
