package persist

import "errors"

// ErrClosed is returned by calls on a Store after Close.
var ErrClosed = errors.New("persist: store closed")

// ErrNotStarted is returned by WaitDurable before Start: nothing commits yet.
var ErrNotStarted = errors.New("persist: committer not started")

// ErrUnhealthy wraps the last disk error while commits are failing; Healthy
// and WaitDurable return it.
var ErrUnhealthy = errors.New("persist: disk writes failing")

// ErrUnavailable is returned by LastSeen while the database is being reopened
// after a disk fault and could not be opened again yet.
var ErrUnavailable = errors.New("persist: database unavailable")

// ErrBadRecord is returned by Replay for a key or value that does not match
// the layout in doc.go.
var ErrBadRecord = errors.New("persist: malformed record")
