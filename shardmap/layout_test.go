package shardmap

import (
	"testing"
	"unsafe"
)

// The memory budget (BenchmarkMemory1M: under 100 heap bytes per session)
// rests on these record sizes and on the chunks being exact size classes.
func TestRecordSizes(t *testing.T) {
	if s := unsafe.Sizeof(sessRec{}); s != 40 || s*chunkSize != 20480 {
		t.Fatalf("sessRec is %d bytes (chunk %d), want 40 (20480, a size class)", s, s*chunkSize)
	}
	if s := unsafe.Sizeof(userRec{}); s != 16 || s*chunkSize != 8192 {
		t.Fatalf("userRec is %d bytes, want 16", s)
	}
}
