// Package jsonbody reads the JSON bodies of the heartbeat path (POST
// /v1/heartbeat, /v1/heartbeats and /v1/leave) without allocating: a
// heartbeat's ids come back as byte slices of the body, or of the parser's
// scratch buffer when they hold escapes, and its state as the raw bytes of
// the JSON object. Every other body of the API is read with encoding/json;
// HasLoneSurrogate lets those refuse what this parser refuses.
//
// What a body may hold: one JSON object (a batch: an object whose
// "heartbeats" is an array of such objects). "user", "room" and "token" are
// strings or null (null is the same as absent); "state" is an object or
// null; any other key is skipped whatever its value; when a key repeats, the
// last one counts. A field of the wrong JSON type leaves the body
// well-formed and is reported in Heartbeat.FieldErr, so a batch can refuse
// just that item. Strings are checked as JSON requires (no control
// characters, valid escapes) and a lone UTF-16 surrogate escape is refused
// rather than turned into U+FFFD, so two different bodies never name the
// same id. Raw bytes are not checked for valid UTF-8: the ids are checked by
// the caller, which refuses invalid UTF-8.
//
// Why not a general JSON library: BENCHMARKS.md ("JSON bodies") compares this
// parser with github.com/valyala/fastjson on the heartbeat path's inputs.
//
// # Concurrency and buffers
//
// A Parser is used by one goroutine at a time (the HTTP handlers keep one per
// pooled scratch). The slices of a Heartbeat alias the body and the parser's
// scratch buffer: they are valid until the next call on the same Parser and
// as long as the caller does not modify the body. The scratch buffer grows
// to the largest body parsed and is kept for the next call.
package jsonbody
