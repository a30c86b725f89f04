package persist

import (
	"fmt"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/shardmap"
)

// Steady state: 10k users heartbeat repeatedly; a cycle runs every 10k
// heartbeats (10k heartbeats/s at the 100ms default would be 1k per
// cycle; 10k keeps the benchmark fast). Reports store records per heartbeat.
func BenchmarkRecordsPerHeartbeat(b *testing.B) {
	mcfg := shardmap.DefaultConfig()
	mcfg.TrackChanges = true
	m, _ := shardmap.New(mcfg)
	s := mustOpen(b, testConfig(vfs.NewMem()))
	defer s.Close()
	const users, perCycle = 1000, 10000
	ids := make([][]byte, users)
	for i := range ids {
		ids[i] = []byte(fmt.Sprintf("user-%06d", i))
	}
	room := []byte("room")
	b.ReportAllocs()
	b.ResetTimer()
	before := s.Stats()
	for i := range b.N {
		m.Touch(ids[i%users], room, int64(1000+i/perCycle), 150_000)
		if i%perCycle == perCycle-1 {
			m.Drain(s.Add)
			s.cycle(true)
		}
	}
	m.Drain(s.Add)
	s.cycle(true)
	st := s.Stats()
	recs := st.SessionSets + st.SessionDeletes + st.LastSeenWrites - before.SessionSets - before.SessionDeletes - before.LastSeenWrites
	b.ReportMetric(float64(recs)/float64(b.N), "records/heartbeat")
}

// Committer throughput on the real disk per Fsync mode: cycles of 1000
// distinct sessions each (the cycle cost dominates: fsync in interval and
// always, write(2) only in off).
func BenchmarkCommitter(b *testing.B) {
	for _, mode := range []FsyncMode{FsyncModeInterval, FsyncModeAlways, FsyncModeOff} {
		b.Run(mode.String(), func(b *testing.B) {
			cfg := testConfig(nil)
			cfg.Dir = b.TempDir()
			cfg.Fsync = mode
			s := mustOpen(b, cfg)
			defer s.Close()
			var src source
			users := make([]string, 1000)
			for i := range users {
				users[i] = fmt.Sprintf("user-%06d", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				src.upsert(users[i%len(users)], "room", int64(i), int64(i)+150_000)
				if i%len(users) == len(users)-1 {
					src.drain(s.Add)
					s.cycle(true)
				}
			}
			src.drain(s.Add)
			s.cycle(true)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
		})
	}
}

var replayDirOnce sync.Once
var replayDir string

// BenchmarkReplay1M replays 1,000,000 live sessions from the real disk
// (built once, outside the timer). Target: <= 3 s on the 2-core box.
func BenchmarkReplay1M(b *testing.B) {
	const n = 1_000_000
	replayDirOnce.Do(func() {
		replayDir = b.TempDir() + "/replay"
		cfg := testConfig(nil)
		cfg.Dir = replayDir
		s := mustOpen(b, cfg)
		batch := s.db.NewBatch()
		var k, v []byte
		for i := range n {
			k = appendSessionKey(k[:0], []byte(fmt.Sprintf("user-%07d", i)), []byte(fmt.Sprintf("room-%03d", i%500)))
			v = appendSessionValue(v[:0], 1000, 1<<60, nil)
			batch.Set(k, v, nil)
			if batch.Count() == 10000 {
				batch.Commit(pebble.NoSync)
				batch = s.db.NewBatch()
			}
		}
		batch.Commit(pebble.Sync)
		s.Close()
	})
	run := func(b *testing.B, live func(m *shardmap.Map) func(u, r []byte, ls, ex int64) error) {
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			mcfg := shardmap.DefaultConfig()
			m, _ := shardmap.New(mcfg)
			cfg := testConfig(nil)
			cfg.Dir = replayDir
			s := mustOpen(b, cfg)
			b.StartTimer()
			st, err := s.Replay(2000, live(m), func(u, r []byte, ls, ex int64) {})
			b.StopTimer()
			if err != nil || st.Live != n {
				b.Fatalf("replay: %+v %v", st, err)
			}
			s.Close()
			b.StartTimer()
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/replay")
	}
	b.Run("noop", func(b *testing.B) {
		run(b, func(*shardmap.Map) func(u, r []byte, ls, ex int64) error {
			return func(u, r []byte, ls, ex int64) error { return nil }
		})
	})
	b.Run("map", func(b *testing.B) {
		run(b, func(m *shardmap.Map) func(u, r []byte, ls, ex int64) error {
			return func(u, r []byte, ls, ex int64) error {
				_, err := m.Restore(u, r, ls, ex, 2000)
				return err
			}
		})
	})
}
