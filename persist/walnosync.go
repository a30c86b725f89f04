package persist

import (
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// walNoSyncFS makes fsync of WAL files a no-op; everything else (sstables,
// MANIFEST, OPTIONS) is still synced. It implements the off policy: Pebble's
// NoSync commits can sit in Pebble's own buffer (lost on kill -9), so off
// mode commits with pebble.Sync through this FS instead. The WAL is then
// written to the OS every cycle (it survives a process crash, and write
// errors surface at once) but never fsynced (power loss may lose it).
type walNoSyncFS struct{ vfs.FS }

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

func (fs walNoSyncFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return wrapWAL(name, f), err
}

func (fs walNoSyncFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return wrapWAL(newname, f), err
}

func (fs walNoSyncFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, category, opts...)
	return wrapWAL(name, f), err
}

func (fs walNoSyncFS) Unwrap() vfs.FS { return fs.FS }

func wrapWAL(name string, f vfs.File) vfs.File {
	if f == nil || !isWAL(name) {
		return f
	}
	return walNoSyncFile{f}
}

type walNoSyncFile struct{ vfs.File }

func (walNoSyncFile) Sync() error                             { return nil }
func (walNoSyncFile) SyncData() error                         { return nil }
func (walNoSyncFile) SyncTo(int64) (fullSync bool, err error) { return false, nil }
