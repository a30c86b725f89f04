// Package openapi holds the OpenAPI 3.1 document of presenced's HTTP API
// (openapi.json): every route, its fields, limits and errors, with the
// event stream (GET /v1/events, text/event-stream) and the WebSocket
// (GET /v1/ws, 101) described as such. The node serves it at
// GET /openapi.json; server/openapi_test.go checks the real server's
// answers against it with kin-openapi.
package openapi

import _ "embed"

// JSON is the document. Callers must not modify it.
//
//go:embed openapi.json
var JSON []byte
