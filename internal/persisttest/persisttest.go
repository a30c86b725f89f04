// Package persisttest damages a log directory the way a disk or a crash
// would, for the tests of persist, of the server that opens it, and of the
// binary. It uses only the standard library (it reads files, never the
// store).
package persisttest

import (
	"os"
	"path/filepath"
	"testing"
)

// FlipSSTable flips 16 bytes a third of the way into the one sstable in dir
// and returns its file name. It fails the test unless dir holds exactly one.
func FlipSSTable(t testing.TB, dir string) string {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) != 1 {
		t.Fatalf("want one sstable, have %v", ssts)
	}
	b, err := os.ReadFile(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range 16 {
		b[len(b)/3+i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(ssts[0])
}

// LargestWAL returns the path and size of the largest write-ahead log file
// in dir: the one holding the data (Pebble keeps recycled empty ones
// beside it). It fails the test when no log file holds any data.
func LargestWAL(t testing.TB, dir string) (string, int64) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var wal string
	var size int64
	for _, l := range logs {
		if fi, err := os.Stat(l); err == nil && fi.Size() > size {
			wal, size = l, fi.Size()
		}
	}
	if wal == "" {
		t.Fatal("no WAL with data")
	}
	return wal, size
}
