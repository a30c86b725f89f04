package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/presenced/presenced/server/token"
)

// mintToken implements `presenced token`: print a heartbeat token signed
// with a key from the secret file.
func mintToken(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("presenced token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secretFile := fs.String("secret-file", "", "file of token keys (required)")
	user := fs.String("user", "", "user id the token is for (required)")
	room := fs.String("room", "", "bind the token to this room (default: any room)")
	validFor := fs.Duration("valid-for", time.Hour, "token lifetime")
	kid := fs.String("kid", "", "key id to sign with (default: the first key in the file)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch {
	case *secretFile == "":
		fmt.Fprintln(stderr, "presenced token: --secret-file is required")
		return 2
	case *user == "":
		fmt.Fprintln(stderr, "presenced token: --user is required")
		return 2
	case *validFor <= 0:
		fmt.Fprintln(stderr, "presenced token: --valid-for must be positive")
		return 2
	}
	kr, err := token.LoadKeyring(*secretFile)
	if err != nil {
		fmt.Fprintln(stderr, "presenced token: --secret-file:", err)
		return 2
	}
	tok, err := kr.Mint(*kid, *user, *room, *room != "", time.Now().Add(*validFor))
	if err != nil {
		fmt.Fprintln(stderr, "presenced token:", err)
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}
