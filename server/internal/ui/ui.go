// Package ui is presenced's read-only live page (/ui): top rooms and
// counts, a live event feed and a room's members, as static files embedded
// in the binary (no build step). The page reads the public API; the
// server guards it with --api-token-file like the read endpoints.
package ui

import (
	"embed"
	"path"

	"github.com/valyala/fasthttp"

	presencedjs "github.com/presenced/presenced/client/js"
)

//go:embed index.html
var files embed.FS

// Serve answers GET /ui, /ui/, /ui/presenced.js and /ui/demo (the
// presenced.js demo page); rest is the path after /ui. It reports false
// for any other path.
func Serve(ctx *fasthttp.RequestCtx, rest string) bool {
	var (
		b   []byte
		err error
	)
	switch rest {
	case "", "/":
		b, err = files.ReadFile("index.html")
	case "/presenced.js":
		b, err = presencedjs.FS.ReadFile("presenced.js")
	case "/demo", "/demo.html":
		b, err = presencedjs.FS.ReadFile("demo.html")
	default:
		return false
	}
	if err != nil { // embedded files are always there
		panic("ui: embedded file missing: " + err.Error())
	}
	switch path.Ext(rest) {
	case ".js":
		ctx.SetContentType("text/javascript; charset=utf-8")
	default:
		ctx.SetContentType("text/html; charset=utf-8")
	}
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBody(b)
	return true
}
