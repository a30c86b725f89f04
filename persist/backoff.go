package persist

import (
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Backoff of Pebble's background writes after a storage error.
const (
	writeBackoffMin = 50 * time.Millisecond
	writeBackoffMax = 5 * time.Second
)

// writeBackoff slows Pebble's retries while the disk fails. Pebble retries
// a failed flush at once, forever (its own TODO says "count consecutive
// flush errors and backoff"): on a full disk that is a busy loop writing
// megabytes of doomed sstables and a log line per attempt. backoffFS
// delays the creation of every non-WAL file after a failed write, doubling
// from writeBackoffMin to writeBackoffMax while failures continue; the WAL
// is never delayed, so commits keep failing (or succeeding) at once.
type writeBackoff struct {
	mu    sync.Mutex
	fails int // consecutive failed writes or syncs since the last good sstable sync
	last  time.Time
}

func (b *writeBackoff) failed() {
	b.mu.Lock()
	b.fails++
	b.last = time.Now()
	b.mu.Unlock()
}

func (b *writeBackoff) succeeded() {
	b.mu.Lock()
	b.fails = 0
	b.mu.Unlock()
}

// delay is how long a new file must still wait.
func (b *writeBackoff) delay() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fails == 0 {
		return 0
	}
	d := writeBackoffMin << min(b.fails-1, 10)
	return min(d, writeBackoffMax) - time.Since(b.last)
}

func (b *writeBackoff) wait() {
	d := b.delay()
	if d <= 0 {
		return
	}
	time.Sleep(d)
}

// backoffFS is the vfs.FS wrapper that applies writeBackoff.
type backoffFS struct {
	vfs.FS
	b *writeBackoff
}

func (fs backoffFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if !isWAL(name) {
		fs.b.wait()
	}
	f, err := fs.FS.Create(name, category)
	if err != nil {
		fs.b.failed()
		return nil, err
	}
	return &backoffFile{File: f, b: fs.b, wal: isWAL(name)}, nil
}

func (fs backoffFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		fs.b.failed()
		return nil, err
	}
	return &backoffFile{File: f, b: fs.b, wal: isWAL(newname)}, nil
}

func (fs backoffFS) Unwrap() vfs.FS { return fs.FS }

// backoffFile reports its writes and syncs to writeBackoff. Only a sync of
// an sstable (or MANIFEST) none of whose writes failed ends the backoff:
// Pebble closes an aborted sstable with a sync that has nothing to write.
// Pebble uses a file from one goroutine at a time.
type backoffFile struct {
	vfs.File
	b   *writeBackoff
	wal bool
	bad bool // a write or sync of this file failed
}

func (f *backoffFile) fail() {
	f.bad = true
	f.b.failed()
}

func (f *backoffFile) synced(err error) error {
	switch {
	case err != nil:
		f.fail()
	case !f.wal && !f.bad:
		f.b.succeeded()
	}
	return err
}

func (f *backoffFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	if err != nil {
		f.fail()
	}
	return n, err
}

func (f *backoffFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	if err != nil {
		f.fail()
	}
	return n, err
}

func (f *backoffFile) Sync() error     { return f.synced(f.File.Sync()) }
func (f *backoffFile) SyncData() error { return f.synced(f.File.SyncData()) }

func (f *backoffFile) SyncTo(length int64) (bool, error) {
	full, err := f.File.SyncTo(length)
	return full, f.synced(err)
}
