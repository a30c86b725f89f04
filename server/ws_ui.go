package server

import (
	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/internal/ui"
)

// hUI serves the read-only live page and the presenced.js files under /ui.
// With --api-token-file the page needs the token, as a bearer header or as
// ?access_token= (a browser opening the page cannot send a header); the
// page then passes it on to the API.
func (s *Server) hUI(ctx *fasthttp.RequestCtx, rest string) {
	// The page may be opened with ?access_token=: no request it makes, and
	// no link followed from it, carries its address in a Referer.
	ctx.Response.Header.Set("Referrer-Policy", "no-referrer")
	// presenced.js and its demo hold no data: only the live page is guarded.
	if (rest == "" || rest == "/") && !s.wsAuthorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="presenced"`)
		jsonError(ctx, fasthttp.StatusUnauthorized, "/ui needs ?access_token=<token from api-token-file> or Authorization: Bearer")
		return
	}
	if !ui.Serve(ctx, rest) {
		jsonError(ctx, fasthttp.StatusNotFound, "unknown path")
	}
}
