package persist

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/shardmap"
)

// checkRecovered reopens fs, replays it, and checks that every session in
// want is there. want must not be empty: a Replay that returns nothing fails.
func checkRecovered(t *testing.T, fs vfs.FS, want []string) {
	t.Helper()
	if len(want) == 0 {
		t.Fatal("nothing was durable before the crash; the test proves nothing")
	}
	s := mustOpen(t, testConfig(fs))
	defer s.Close()
	live, _, st := replayAll(t, s, 0)
	if !st.Unclean {
		t.Error("crash not reported as unclean")
	}
	if d := s.Damage(); d.LostCommits != 0 {
		t.Errorf("a crash within the promise reported as a damaged log: %v", d)
	}
	missing := 0
	for _, u := range want {
		if _, ok := live[[2]string{u, "r"}]; !ok {
			missing++
			if missing < 5 {
				t.Errorf("session %s synced before the crash is missing", u)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d durable sessions missing (replayed %d)", missing, len(want), len(live))
	}
}

// always: every change whose WaitDurable returned before the crash survives.
func TestCrashAlways(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			fs := vfs.NewCrashableMem()
			cfg := testConfig(fs)
			cfg.Fsync = FsyncModeAlways
			cfg.FsyncInterval = time.Hour
			s := mustOpen(t, cfg)
			defer s.Close()
			var src source
			src.start(t, s)
			var (
				mu      sync.Mutex
				durable []string
				stop    atomic.Bool
				wg      sync.WaitGroup
			)
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; !stop.Load(); i++ {
						u := fmt.Sprintf("w%d-%d", w, i)
						src.upsert(u, "r", 1, 1<<60)
						if err := s.WaitDurable(context.Background()); err != nil {
							return
						}
						mu.Lock()
						durable = append(durable, u)
						mu.Unlock()
					}
				}()
			}
			time.Sleep(time.Duration(20+rng.IntN(60)) * time.Millisecond) // a random crash point while writers run
			var want []string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				mu.Lock()
				want = append(want[:0], durable...)
				mu.Unlock()
				if len(want) > 0 || time.Now().After(deadline) {
					break // on a loaded machine the first sync may come late
				}
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(seed, 2))})
			stop.Store(true)
			wg.Wait()
			checkRecovered(t, crashed, want)
		})
	}
}

// interval: every change handed to Add at least one full synced cycle
// before the crash survives, without anyone waiting.
func TestCrashInterval(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			fs := vfs.NewCrashableMem()
			cfg := testConfig(fs)
			cfg.FsyncInterval = 2 * time.Millisecond
			s := mustOpen(t, cfg)
			defer s.Close()
			s.Start(nil)
			type queued struct {
				user  string
				cycle uint64 // synced cycles completed (at least) when it was queued
			}
			var (
				mu   sync.Mutex
				log  []queued
				stop atomic.Bool
				done = make(chan struct{})
			)
			go func() {
				defer close(done)
				for i := 0; !stop.Load(); i++ {
					u := fmt.Sprintf("u%d", i)
					s.Add(&shardmap.Change{User: []byte(u), Room: []byte("r"), LastSeen: 1, Expiry: 1 << 60})
					// Read after Add: at least the count when Add ran (read
					// before it, a writer descheduled in between would claim
					// cycles that synced before its change was even added).
					c := s.ctr.syncCount.Load()
					mu.Lock()
					log = append(log, queued{u, c})
					mu.Unlock()
					if i%64 == 0 {
						time.Sleep(100 * time.Microsecond) // paces the writer so the syncer keeps up
					}
				}
			}()
			time.Sleep(time.Duration(20+rng.IntN(60)) * time.Millisecond) // a random crash point while writers run
			// A change added when n cycles had synced is taken by cycle n+1
			// at the latest (n+1 may have taken the intake just before it), so
			// it is on disk once n+2 cycles have synced. On a loaded machine
			// (-race, other packages' tests) the committer may not have got
			// that far yet: wait until something qualifies, bounded.
			var want []string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				synced := s.ctr.syncCount.Load()
				mu.Lock()
				want = want[:0]
				for _, q := range log {
					if q.cycle+2 <= synced {
						want = append(want, q.user)
					}
				}
				mu.Unlock()
				if len(want) > 0 || time.Now().After(deadline) {
					break
				}
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(seed, 2))})
			stop.Store(true)
			<-done
			checkRecovered(t, crashed, want)
		})
	}
}

// walFaults fails writes and syncs of WAL files while on.
type walFaults struct{ on atomic.Bool }

func (f *walFaults) String() string { return "wal-faults" }
func (f *walFaults) MaybeError(op errorfs.Op) error {
	if !f.on.Load() || !strings.HasSuffix(op.Path, ".log") {
		return nil
	}
	switch op.Kind {
	case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo, errorfs.OpCreate:
		return errorfs.ErrInjected
	}
	return nil
}

func TestDiskFaults(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncModeInterval, FsyncModeOff} {
		t.Run(mode.String(), func(t *testing.T) {
			mem := vfs.NewMem()
			faults := &walFaults{}
			cfg := testConfig(errorfs.Wrap(mem, faults))
			cfg.Fsync = mode
			s := mustOpen(t, cfg)
			var src source
			src.start(t, s)
			src.upsert("before", "r", 1, 1<<60)
			if err := s.WaitDurable(context.Background()); err != nil {
				t.Fatal(err)
			}

			faults.on.Store(true)
			for i := range 50 {
				src.upsert(fmt.Sprintf("during%d", i), "r", 2, 1<<60)
				time.Sleep(time.Millisecond) // paces the writes over several commit cycles
			}
			testkit.Eventually(t, 10*time.Second, "unhealthy", func() bool { return s.Healthy() != nil })
			if err := s.WaitDurable(context.Background()); err == nil {
				t.Error("WaitDurable succeeded while the WAL fails")
			}
			st := s.Stats()
			if st.SyncErrors+st.CommitErrors == 0 || st.PendingBytes == 0 {
				t.Errorf("no errors counted while failing: %+v", st)
			}

			faults.on.Store(false)
			testkit.Eventually(t, 10*time.Second, "healthy again", func() bool { return s.Healthy() == nil })
			src.upsert("after", "r", 3, 1<<60)
			if err := s.WaitDurable(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Logf("stats after the fault: %+v", s.Stats())
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = mustOpen(t, testConfig(mem))
			defer s.Close()
			live, _, _ := replayAll(t, s, 0)
			for _, u := range []string{"before", "during0", "during49", "after"} {
				if _, ok := live[[2]string{u, "r"}]; !ok {
					t.Errorf("%s lost across the fault (have %d sessions)", u, len(live))
				}
			}
		})
	}
}
