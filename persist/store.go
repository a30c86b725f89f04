package persist

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/shardmap"
)

// Tuning that is not worth a Config field; tests lower some of them.
const (
	sweepChunk          = 4096             // last-seen keys examined per sweep step
	replayBatchOps      = 16 << 10         // deletes per Replay batch
	compactMinDeletes   = 64 << 10         // deletes since the last manual compaction that trigger one
	compactMinInterval  = 10 * time.Minute // at most one manual compaction this often
	closeOldDBTimeout   = 10 * time.Second // a DB that will not close after a fatal error is abandoned
	errorLogMinInterval = 10 * time.Second // while commits keep failing, log at most this often
)

// Store is the write-ahead store. See doc.go for the concurrency contract.
type Store struct {
	cfg  Config
	log  *slog.Logger
	fs   vfs.FS
	now  func() int64 // unix ms
	seed maphash.Seed

	// dbMu guards db: readers and the committer's writes hold it shared, a
	// reopen exclusively. db is nil only after a failed reopen.
	dbMu sync.RWMutex
	db   *pebble.DB

	unclean bool // the marker was found at Open
	ctr     counters

	mu struct {
		sync.Mutex
		waiters []chan error // WaitDurable callers, served by the next cycle
		health  error        // non-nil while commits fail
		replay  ReplayStats
		started bool
		closed  bool
	}

	kick          chan struct{} // cap 1: a waiter wants a cycle now
	quit          chan struct{}
	compactCtx    context.Context
	compactCancel context.CancelFunc
	wg            sync.WaitGroup

	c committer // owned by the committer goroutine (and by Close once it stopped)

	// Lowered by tests.
	compactMinDeletes  int
	compactMinInterval time.Duration
	firstSweepDelay    time.Duration
}

// Open opens (creating if needed) the store in cfg.Dir and records that it is
// open, so that a crash before Close is noticed by the next Open.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{
		cfg:                cfg,
		log:                cfg.Logger,
		fs:                 cfg.FS,
		now:                func() int64 { return time.Now().UnixMilli() },
		seed:               maphash.MakeSeed(),
		kick:               make(chan struct{}, 1),
		quit:               make(chan struct{}),
		compactMinDeletes:  compactMinDeletes,
		compactMinInterval: compactMinInterval,
		firstSweepDelay:    min(cfg.SweepInterval, time.Minute),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "persist")
	if s.fs == nil {
		s.fs = vfs.Default
	}
	if cfg.Fsync == FsyncModeOff {
		s.fs = walNoSyncFS{s.fs}
	}
	s.compactCtx, s.compactCancel = context.WithCancel(context.Background())
	s.c.idx = make(map[uint64]int32)

	db, err := s.openDB()
	if err != nil {
		return nil, err
	}
	_, closer, err := db.Get(markerKey)
	switch {
	case err == nil:
		s.unclean = true
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		db.Close()
		return nil, fmt.Errorf("cannot read unclean-shutdown marker: %w", err)
	}
	if err := db.Set(markerKey, appendMillis(nil, s.now()), pebble.Sync); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot write unclean-shutdown marker: %w", err)
	}
	s.db = db
	return s, nil
}

func (s *Store) pebbleOptions() *pebble.Options {
	o := &pebble.Options{
		FS:                 s.fs,
		FormatMajorVersion: pebble.FormatNewest,
		Merger:             lastSeenMerger,
		Logger:             pebbleLogger{s.log},
		// 64 MiB memtables: every session is rewritten once per heartbeat
		// interval, so a memtable that holds several intervals of refreshes
		// flushes each session once instead of once per refresh (measured:
		// 16 MiB sustained 15k heartbeats/s on 2 cores, 64 MiB 22.5k+).
		// Costs up to two memtables (128 MiB) of RAM under sustained load.
		MemTableSize: 64 << 20,
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) {
				s.log.Error("pebble background error", "err", err)
			},
			DiskSlow: func(info pebble.DiskSlowInfo) {
				s.log.Warn("disk slow", "path", info.Path, "op", info.OpType.String(), "duration", info.Duration)
			},
		},
	}
	// Tombstone-dense compactions are on by default (blocks with >= 100
	// point deletes or >= 50% tombstone bytes; tables with >= 10% such
	// blocks); ended sessions are mostly such deletes. A manual compaction
	// after many deletes (compactMinDeletes) backs them up.
	return o
}

// openDB opens Pebble, turning a Fatalf panic during Open into an error.
func (s *Store) openDB() (db *pebble.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("cannot open pebble database %s: pebble panic: %v", s.cfg.Dir, r)
		}
	}()
	db, err = pebble.Open(s.cfg.Dir, s.pebbleOptions())
	if err != nil {
		return nil, fmt.Errorf("cannot open pebble database %s: %w", s.cfg.Dir, err)
	}
	return db, nil
}

// ReplayStats says what Replay found.
type ReplayStats struct {
	Live     int           // sessions handed to live
	Expired  int           // sessions that expired while down, handed to expired and deleted
	Duration time.Duration // time spent in Replay
	Unclean  bool          // the previous process did not Close the store (crash, kill -9, power loss)
}

// Replay walks every session record once, in key order. Sessions with expiry
// > now go to live (the server restores them into the map; an error stops
// Replay and is returned). Sessions that expired while the node was down go
// to expired (the server emits a timeout leave at their expiry time); their
// records are then deleted and their user's last-seen updated.
//
// user and room are valid only during the call: copy what you keep. Neither
// function may call back into the Store. If the process dies during Replay,
// expired may be called again for the same session at the next start.
// Call Replay once, after Open and before Start.
func (s *Store) Replay(
	now int64,
	live func(user, room []byte, lastSeen, expiry int64) error,
	expired func(user, room []byte, lastSeen, expiry int64),
) (ReplayStats, error) {
	return s.ReplayStates(now, func(user, room, _ []byte, lastSeen, expiry int64) error {
		return live(user, room, lastSeen, expiry)
	}, expired)
}

// ReplayStates is Replay whose live callback also gets the session's state
// (nil: none), valid only during the call.
func (s *Store) ReplayStates(
	now int64,
	live func(user, room, state []byte, lastSeen, expiry int64) error,
	expired func(user, room []byte, lastSeen, expiry int64),
) (ReplayStats, error) {
	start := time.Now()
	st := ReplayStats{Unclean: s.unclean}
	s.mu.Lock()
	bad := s.mu.started || s.mu.closed
	s.mu.Unlock()
	if bad {
		return st, fmt.Errorf("cannot replay: %w", ErrNotStarted)
	}
	db := s.db
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: sessionLower, UpperBound: sessionUpper})
	if err != nil {
		return st, fmt.Errorf("cannot replay sessions: %w", err)
	}
	b := db.NewBatch()
	var key []byte
	var val [8]byte
	commit := func(opts *pebble.WriteOptions) error {
		if b.Empty() {
			return nil
		}
		if err := b.Commit(opts); err != nil {
			return fmt.Errorf("cannot delete expired sessions: %w", err)
		}
		b.Reset()
		return nil
	}
	for valid := it.First(); valid; valid = it.Next() {
		user, room, ok := decodeSessionKey(it.Key())
		v, verr := it.ValueAndErr()
		if verr != nil {
			it.Close()
			return st, fmt.Errorf("cannot replay sessions: %w", verr)
		}
		lastSeen, expiry, state, ok2 := decodeSessionValue(v)
		if !ok || !ok2 {
			it.Close()
			return st, fmt.Errorf("cannot replay session %q: %w", it.Key(), ErrBadRecord)
		}
		if expiry > now {
			if err := live(user, room, state, lastSeen, expiry); err != nil {
				it.Close()
				return st, fmt.Errorf("cannot restore session: %w", err)
			}
			st.Live++
			continue
		}
		expired(user, room, lastSeen, expiry)
		st.Expired++
		_ = b.Delete(it.Key(), nil)
		key = appendLastSeenKey(key[:0], user)
		_ = b.Merge(key, appendMillis(val[:0], lastSeen), nil)
		if b.Count() >= replayBatchOps {
			if err := commit(pebble.NoSync); err != nil {
				it.Close()
				return st, err
			}
		}
	}
	if err := it.Close(); err != nil {
		return st, fmt.Errorf("cannot replay sessions: %w", err)
	}
	if err := commit(pebble.Sync); err != nil {
		return st, err
	}
	b.Close()
	s.ctr.sessionDeletes.Add(uint64(st.Expired))
	s.ctr.lastSeenWrites.Add(uint64(st.Expired))
	st.Duration = time.Since(start)
	s.mu.Lock()
	s.mu.replay = st
	s.mu.Unlock()
	return st, nil
}

// Start starts the committer, which calls drain every Config.FsyncInterval
// (and at once when someone waits in WaitDurable) and commits what it
// returns. drain is shardmap.Map.Drain: it must not block, and fn's Change is
// valid only during the call. Start panics if called twice or after Close.
func (s *Store) Start(drain func(fn func(*shardmap.Change)) int) {
	s.mu.Lock()
	if s.mu.started || s.mu.closed {
		s.mu.Unlock()
		panic("persist: Start called twice or after Close")
	}
	s.mu.started = true
	s.c.drain = drain
	s.mu.Unlock()
	s.startGoroutine(s.run)
}

// startGoroutine is the one way this package starts a background goroutine;
// Close waits for all of them.
func (s *Store) startGoroutine(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// WaitDurable returns once a commit cycle that started after the call has
// committed and fsynced, in every Fsync mode. Concurrent callers share one
// cycle and one fsync. It returns the cycle's error (wrapping ErrUnhealthy)
// if that commit failed (the changes stay pending and are retried), or
// ctx.Err().
func (s *Store) WaitDurable(ctx context.Context) error {
	ch := make(chan error, 1)
	s.mu.Lock()
	switch {
	case s.mu.closed:
		s.mu.Unlock()
		return ErrClosed
	case !s.mu.started:
		s.mu.Unlock()
		return ErrNotStarted
	}
	s.mu.waiters = append(s.mu.waiters, ch)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// LastSeen returns when the user's most recent ended session was last
// seen (unix ms) as of the last commit; ok is false if none ended within
// the retention. Live sessions keep their last-seen in their own records
// and in the map, which the server asks first.
func (s *Store) LastSeen(user []byte) (ms int64, ok bool, err error) {
	var buf [1 + maxUserLen]byte
	if len(user) > maxUserLen {
		return 0, false, nil
	}
	key := appendLastSeenKey(buf[:0], user)
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	s.mu.Lock()
	closed := s.mu.closed
	s.mu.Unlock()
	if closed && s.db == nil {
		return 0, false, ErrClosed
	}
	if s.db == nil {
		return 0, false, ErrUnavailable
	}
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("cannot read last-seen: %w", err)
	}
	defer closer.Close()
	ms, ok = decodeMillis(v)
	if !ok {
		return 0, false, fmt.Errorf("cannot read last-seen: %w", ErrBadRecord)
	}
	return ms, true, nil
}

// Healthy returns nil while commits succeed, else an error wrapping
// ErrUnhealthy and the last disk error. The server answers /readyz with 503
// while it is non-nil.
func (s *Store) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.health
}

// Close stops the committer, drains the map one last time and commits with
// an fsync, clears the unclean marker (only if that commit succeeded) and
// closes the database. Waiters still queued get the final cycle's result.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.mu.closed = true
	started := s.mu.started
	s.mu.Unlock()

	close(s.quit)
	s.compactCancel()
	s.wg.Wait()

	var err error
	if started {
		err = s.cycle(true)
	}
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if s.db == nil {
		return errors.Join(err, fmt.Errorf("cannot close store: %w", ErrUnavailable))
	}
	if err == nil && !s.c.broken {
		if derr := s.db.Delete(markerKey, pebble.Sync); derr != nil {
			err = fmt.Errorf("cannot clear unclean-shutdown marker: %w", derr)
		}
	}
	if cerr := closeDB(s.db, closeOldDBTimeout); cerr != nil {
		err = errors.Join(err, fmt.Errorf("cannot close pebble database: %w", cerr))
	}
	s.db = nil
	return err
}

// closeDB closes db, turning a panic into an error and giving up (leaking
// the DB) after timeout, for a DB left broken by a fatal error.
func closeDB(db *pebble.DB, timeout time.Duration) error {
	done := make(chan error, 1)
	// Not tracked by Store.wg on purpose: a DB that hangs in Close must not
	// hang the Store's Close as well.
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("pebble panic: %v", r)
			}
		}()
		done <- db.Close()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("pebble Close did not return within %v; database abandoned", timeout)
	}
}
