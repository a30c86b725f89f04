package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/presenced/presenced/server/token"
)

// SignatureHeader is the header that carries a batch's signature.
const SignatureHeader = "X-Presenced-Signature"

// LoadSecret reads a keyring file (the --secret-file format, validated by
// token.ParseKeyring) and returns the secret of its first key, the one
// that signs. Rotation works as for tokens: put the new key first, and let
// receivers accept either while they switch.
func LoadSecret(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read webhook secret: %w", err)
	}
	if _, err := token.ParseKeyring(data); err != nil {
		return nil, fmt.Errorf("cannot load webhook secret: %w", err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.Trim(line, " \t\r")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		sep := bytes.IndexAny(line, " \t")
		return bytes.Trim(line[sep:], " \t\r"), nil
	}
	return nil, errors.New("cannot load webhook secret: no key") // unreachable: ParseKeyring checked
}

// Sign returns the X-Presenced-Signature value of body sent at unix time t:
// "t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret []byte, t int64, body []byte) string {
	ts := strconv.FormatInt(t, 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// ErrBadSignature is returned by Verify for a missing, malformed, wrong or
// stale signature.
var ErrBadSignature = errors.New("webhook signature does not verify")

// Verify checks a signature header against body, as a receiver written in
// Go would (README "Webhooks"): the HMAC must match and t must be within
// tolerance seconds of now.
func Verify(secret []byte, header string, body []byte, now, tolerance int64) error {
	var t int64 = -1
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return ErrBadSignature
			}
			t = n
		case "v1":
			sigs = append(sigs, v)
		}
	}
	if t < 0 || len(sigs) == 0 || now-t > tolerance || t-now > tolerance {
		return ErrBadSignature
	}
	want := Sign(secret, t, body)
	want = want[strings.Index(want, "v1=")+3:]
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}
