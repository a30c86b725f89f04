package server

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"

	"github.com/valyala/fasthttp"
)

// CORS: browsers on other origins may call the API, import the browser
// module and open the WebSocket when --cors-origins allows their origin.
// Every answer to such a request carries Access-Control-Allow-Origin (and
// Vary: Origin when the answer depends on it); an OPTIONS preflight gets
// 204 with the methods and request headers the API takes, before routing.
// A request from an origin that is not allowed is answered as always, without
// the header, so the browser withholds it from the page; its preflight gets
// 403. The WebSocket upgrade applies the same list to its Origin header
// (corsPolicy.allowWS).

// The preflight answer: every method and request header the API takes.
const (
	corsAllowMethods = "GET, POST, HEAD, OPTIONS"
	corsAllowHeaders = "Authorization, Content-Type, Last-Event-ID"
	corsMaxAge       = "600"
)

// corsPolicy is the parsed --cors-origins.
type corsPolicy struct {
	any     bool     // "*"
	origins [][]byte // exact origins, lower-case scheme://host[:port]
}

// parseCORSOrigins reads --cors-origins: "*", empty, or a comma-separated
// list of origins (scheme://host[:port], no path).
func parseCORSOrigins(v string) (corsPolicy, error) {
	var p corsPolicy
	for _, o := range strings.Split(v, ",") {
		o = strings.TrimSpace(o)
		switch {
		case o == "":
			continue
		case o == "*":
			p.any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return corsPolicy{}, fmt.Errorf("--cors-origins: %q must be * or an origin like https://app.example.com[:port]", o)
		}
		p.origins = append(p.origins, []byte(strings.ToLower(u.Scheme+"://"+u.Host)))
	}
	return p, nil
}

// allowed reports whether a request with this Origin header may read the
// answer from another origin.
func (p *corsPolicy) allowed(origin []byte) bool {
	if p.any {
		return true
	}
	for _, o := range p.origins {
		if bytes.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// cors adds the CORS headers to a cross-origin request's answer and answers
// its preflight. It reports whether the request is done (a preflight).
// Requests without an Origin header (not from a browser page, or same-origin
// GETs) pass untouched. It does not allocate.
func (s *Server) cors(ctx *fasthttp.RequestCtx) bool {
	origin := ctx.Request.Header.Peek("Origin")
	preflight := ctx.IsOptions()
	if len(origin) == 0 {
		if preflight {
			ctx.Response.Header.Set("Allow", corsAllowMethods)
			ctx.SetStatusCode(fasthttp.StatusNoContent)
		}
		return preflight
	}
	if !s.corsPol.allowed(origin) {
		if preflight {
			jsonError(ctx, fasthttp.StatusForbidden, "origin is not allowed by cors-origins")
		}
		return preflight
	}
	if s.corsPol.any {
		ctx.Response.Header.Set("Access-Control-Allow-Origin", "*")
	} else {
		ctx.Response.Header.SetBytesV("Access-Control-Allow-Origin", origin)
		ctx.Response.Header.Set("Vary", "Origin")
	}
	if preflight {
		ctx.Response.Header.Set("Access-Control-Allow-Methods", corsAllowMethods)
		ctx.Response.Header.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		ctx.Response.Header.Set("Access-Control-Max-Age", corsMaxAge)
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
	return preflight
}

// allowWS is the WebSocket upgrade's origin check: clients that send no
// Origin (not a browser), pages of the node itself (the /ui page) and
// origins --cors-origins allows may connect.
func (p *corsPolicy) allowWS(ctx *fasthttp.RequestCtx) bool {
	origin := ctx.Request.Header.Peek("Origin")
	if len(origin) == 0 || p.allowed(origin) {
		return true
	}
	u, err := url.Parse(string(origin))
	return err == nil && strings.EqualFold(u.Host, string(ctx.Host()))
}
