package server

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"

	"github.com/valyala/fasthttp"
)

// loadAPITokens reads bearer tokens, one per line; blank lines and lines
// starting with # are ignored. Each must be at least 16 bytes.
func loadAPITokens(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read API tokens: %w", err)
	}
	var toks [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if len(line) < 16 {
			return nil, fmt.Errorf("line %d: an API token must be at least 16 bytes", n)
		}
		toks = append(toks, append([]byte(nil), line...))
	}
	if len(toks) == 0 {
		return nil, errors.New("no API token in the file")
	}
	return toks, sc.Err()
}

// apiAuthorized checks the bearer token of a read request when
// --api-token-file is set, answering 401 when it is missing or wrong.
// Comparison is constant-time per token.
func (s *Server) apiAuthorized(ctx *fasthttp.RequestCtx) bool {
	toks := s.apiTokens.Load()
	if toks == nil {
		return true
	}
	got, ok := bytes.CutPrefix(ctx.Request.Header.Peek("Authorization"), []byte("Bearer "))
	if ok {
		match := 0
		for _, t := range *toks {
			match |= subtle.ConstantTimeCompare(got, t)
		}
		if match == 1 {
			return true
		}
	}
	ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="presenced"`)
	jsonError(ctx, fasthttp.StatusUnauthorized, "read endpoints need Authorization: Bearer <token from api-token-file>")
	return false
}
