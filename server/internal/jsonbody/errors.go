package jsonbody

import (
	"errors"
	"fmt"
)

// ErrSyntax is returned for a body that is not one well-formed JSON text of
// the expected shape: bad JSON, a top level that is not an object, a batch
// item that is not an object, a lone UTF-16 surrogate escape anywhere, or a
// value nested deeper than MaxDepth (ErrTooDeep, which is also ErrSyntax).
var ErrSyntax = errors.New("malformed JSON")

// ErrTooDeep is returned for a value nested deeper than MaxDepth below its
// field. errors.Is(ErrTooDeep, ErrSyntax) holds.
var ErrTooDeep = fmt.Errorf("%w: nested deeper than %d levels", ErrSyntax, MaxDepth)

// ErrTooMany is returned by Parser.Batch when the batch holds more items
// than its limit. Parsing stops at the first item past the limit.
var ErrTooMany = errors.New("too many items")

// ErrMissingHeartbeats is returned by Parser.Batch for a well-formed object
// without a "heartbeats" array (the key absent, or null, an object or a
// string in its place).
var ErrMissingHeartbeats = errors.New(`"heartbeats" must be an array`)
