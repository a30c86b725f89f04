package persist

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The delivery queue keeps appended records in order across a crash (the
// appends are synced) and forgets deleted ones; session replay ignores it.
func TestQueueSurvivesCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := testConfig(fs)
	s := mustOpen(t, cfg)
	q, err := s.OpenQueue()
	if err != nil {
		t.Fatal(err)
	}
	var recs [][]byte
	for i := range 10 {
		recs = append(recs, []byte(fmt.Sprintf("event-%d", i)))
	}
	if err := q.Append(1000, recs[:6]); err != nil {
		t.Fatal(err)
	}
	items, err := q.Read(4)
	if err != nil || len(items) != 4 || string(items[3].Data) != "event-3" {
		t.Fatalf("read %v, %v", items, err)
	}
	if err := q.Delete(items[3].Seq); err != nil {
		t.Fatal(err)
	}
	if n, oldest := q.Len(); n != 2 || oldest != 1000 {
		t.Fatalf("len %d oldest %d, want 2, 1000", n, oldest)
	}
	// A delete is not synced by itself; the next (synced) append makes it
	// durable with it.
	if err := q.Append(2000, recs[6:]); err != nil {
		t.Fatal(err)
	}

	// Crash: keep only what was synced.
	cfg.FS = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 1))})
	s2 := mustOpen(t, cfg)
	defer s2.Close()
	if live, _, _ := replayAll(t, s2, 0); len(live) != 0 {
		t.Fatalf("replay found sessions in the queue: %v", live)
	}
	q2, err := s2.OpenQueue()
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := q2.Len(); n != 6 {
		t.Fatalf("after the crash the queue holds %d, want 6", n)
	}
	items, err = q2.Read(100)
	if err != nil || len(items) != 6 {
		t.Fatalf("read %d, %v", len(items), err)
	}
	for i, it := range items {
		if want := fmt.Sprintf("event-%d", i+4); string(it.Data) != want {
			t.Fatalf("item %d = %q, want %q", i, it.Data, want)
		}
	}
	if err := q2.Append(3000, [][]byte{[]byte("after")}); err != nil {
		t.Fatal(err)
	}
	items, _ = q2.Read(100)
	if last := items[len(items)-1]; string(last.Data) != "after" || last.Seq != items[len(items)-2].Seq+1 {
		t.Fatalf("appended after reopen: %+v", last)
	}
	_ = s.Close()
}
