package token_test

import (
	"fmt"
	"time"

	"github.com/presenced/presenced/server/token"
)

// A backend mints a room-bound token for a user with the keyring's first
// key; the server verifies it against the same keyring.
func Example() {
	kr, err := token.ParseKeyring([]byte("# presenced keys\nk1 0123456789abcdef0123456789abcdef\n"))
	if err != nil {
		panic(err)
	}
	exp := time.Unix(1700000000, 0)
	tok, err := kr.Mint("k1", "alice", "lobby", true, exp)
	if err != nil {
		panic(err)
	}
	fmt.Println(tok)
	fmt.Println(kr.Verify([]byte(tok), []byte("alice"), []byte("lobby"), exp.Unix()-60))
	fmt.Println(kr.Verify([]byte(tok), []byte("alice"), []byte("kitchen"), exp.Unix()-60) != nil)
	// Output:
	// k1.1700000000.r.Tsp-J8CEq-nP6Iy6OGQ68akzL6cYvMZzRHLtcvMNS3U
	// <nil>
	// true
}
