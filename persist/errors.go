package persist

import (
	"errors"
	"fmt"
)

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

// ErrCorrupt marks on-disk corruption found by a checksum (an sstable block,
// the MANIFEST). The store cannot be used as it is: move it aside and keep
// what can be read with Repair (presenced repair --data-dir D).
var ErrCorrupt = errors.New("persist: on-disk corruption")

// CorruptionError names the damaged file. It wraps ErrCorrupt and Pebble's
// error.
type CorruptionError struct {
	Path string // the damaged file, as Pebble named it (under Config.Dir)
	Err  error
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("%v: file %s is damaged (%v); move it aside and keep what can be read with: presenced repair --data-dir <dir>", ErrCorrupt, e.Path, e.Err)
}

func (e *CorruptionError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }
