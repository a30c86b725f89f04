package persist

import (
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// L users stay; 10×L come and go; after the sweep and a compaction the store
// holds about L sessions + L last-seen records, not the history.
func TestChurnBoundedDisk(t *testing.T) {
	const L = 2000
	day := int64(24 * 3600 * 1000)
	now := 100 * day
	run := func(churn bool) (sessions, lastSeen int, tables uint64) {
		cfg := testConfig(vfs.NewMem())
		cfg.LastSeenRetention = 30 * 24 * time.Hour
		s := mustOpen(t, cfg)
		defer s.Close()
		s.now = func() int64 { return now }
		var src source
		cycle := func() error { // driven by hand, no committer goroutine
			src.drain(s.Add)
			return s.cycle(true)
		}
		for i := range L {
			src.upsert(fmt.Sprintf("live-%06d", i), "room", now, now+150_000)
		}
		if err := cycle(); err != nil {
			t.Fatal(err)
		}
		if churn {
			for round := range 10 {
				old := now - 40*day + int64(round) // older than the retention
				for i := range L {
					u := fmt.Sprintf("gone-%02d-%06d", round, i)
					src.upsert(u, "room", old, old+150_000)
					src.end(u, "room", old, old+150_000)
				}
				if err := cycle(); err != nil {
					t.Fatal(err)
				}
			}
			s.c.sweeping = true
			s.c.sweepCursor = append(s.c.sweepCursor[:0], lastSeenLower...)
			s.c.sweepCutoff = now - cfg.LastSeenRetention.Milliseconds()
			for s.c.sweeping {
				s.sweepStep()
			}
		}
		if err := s.compact(); err != nil {
			t.Fatal(err)
		}
		// Pebble's own elision-only (tombstone) compactions run in the
		// background once table stats are loaded; give them a moment.
		for range 200 {
			if m := s.db.Metrics(); m.Table.Local.LiveSize < 100<<10 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		st := s.Stats()
		m := s.db.Metrics()
		t.Logf("churn=%v wal=%d obsoleteWAL=%d tables=%d obsoleteTables=%d zombie=%d", churn, m.WAL.PhysicalSize, m.WAL.ObsoletePhysicalSize, m.Table.Local.LiveSize, m.Table.Local.ObsoleteSize, m.Table.Local.ZombieSize)
		_ = st
		return countKeys(t, s.db, sessionLower, sessionUpper), countKeys(t, s.db, lastSeenLower, lastSeenUpper), m.Table.Local.LiveSize
	}
	bs, bl, bdisk := run(false)
	cs, cl, cdisk := run(true)
	t.Logf("baseline: %d sessions, %d last-seen, %d bytes; churned: %d, %d, %d bytes", bs, bl, bdisk, cs, cl, cdisk)
	// Live users' last-seen is in their session records; the churned
	// users' last-seen records are past the retention and swept.
	if cs != L || bs != L || cl != 0 || bl != 0 {
		t.Fatalf("keys after churn: %d sessions, %d last-seen; want %d and 0", cs, cl, L)
	}
	// Tables (the data) must track the live set. WAL files are excluded:
	// Pebble keeps obsolete WALs for recycling, bounded by a few memtables.
	if cdisk > 2*bdisk+16<<10 {
		t.Fatalf("tables after churn %d bytes, baseline %d: history is kept", cdisk, bdisk)
	}
}
