package persist

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/internal/routine"
)

// Tuning that is not worth a Config field; tests lower some of them.
const (
	sweepChunk          = 4096             // last-seen keys examined per sweep step
	replayBatchOps      = 16 << 10         // deletes per Replay batch
	compactMinDeletes   = 64 << 10         // deletes since the last manual compaction that trigger one
	compactMinInterval  = 10 * time.Minute // at most one manual compaction this often
	closeOldDBTimeout   = 10 * time.Second // a DB that will not close after a fatal error is abandoned
	errorLogMinInterval = 10 * time.Second // while commits keep failing, log at most this often
	reopenBackoffMin    = 100 * time.Millisecond
	reopenBackoffMax    = 10 * time.Second
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

	unclean atomic.Bool // the marker was found at Open
	opened  atomic.Bool // Open succeeded (db may be nil again during a reopen)
	dbDown  atomic.Bool // db was closed after a fatal error and is not open again yet
	backoff writeBackoff
	// Rate limits of Pebble's own error lines (one per errorLogMinInterval).
	bgErrLog, pebbleErrLog logLimiter
	// lastStorageErr is the last write error Pebble reported (one line).
	lastStorageErr atomic.Pointer[string]
	ctr            counters
	// corrupt is the first on-disk corruption Pebble reported (nil if none).
	corrupt atomic.Pointer[CorruptionError]

	mu struct {
		sync.Mutex
		waiters []chan error // WaitDurable callers, served by the next cycle
		health  error        // non-nil while commits fail
		replay  ReplayStats
		lost    WALDamage // what Open found missing from the log
		// walStops are Pebble's notes of where it stopped reading each
		// WAL at open ("stopped reading at offset ...").
		walStops []string
		started  bool
		closed   bool
	}

	kick          chan struct{} // cap 1: a waiter wants a cycle now
	quit          chan struct{}
	compactCtx    context.Context
	compactCancel context.CancelFunc
	routines      routine.Group

	in intake    // changes added since the last cycle (Add)
	c  committer // owned by the committer goroutine (and by Close once it stopped)

	// Lowered by tests.
	compactMinDeletes  int
	compactMinInterval time.Duration
	firstSweepDelay    time.Duration
}

// New builds a store for cfg without touching the disk: its methods are
// safe to call at once (LastSeen answers ErrUnavailable, State
// StateOpening), so a server can publish it before Open. Call Open next.
func New(cfg Config) (*Store, error) {
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
	s.bgErrLog.every, s.pebbleErrLog.every = errorLogMinInterval, errorLogMinInterval
	s.fs = backoffFS{s.fs, &s.backoff}
	s.compactCtx, s.compactCancel = context.WithCancel(context.Background())
	s.in.p, s.c.p = newPending(), newPending()
	return s, nil
}

// Open opens (creating if needed) the store in cfg.Dir and records that it is
// open, so that a crash before Close is noticed by the next Open. It is
// New followed by (*Store).Open.
func Open(cfg Config) (*Store, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Open(); err != nil {
		return nil, err
	}
	return s, nil
}

// Open opens the database of a store made by New. Pebble replays its log
// first and must write to do so: on a full disk it retries forever, so Open
// gives up after Config.OpenTimeout with an error naming the last storage
// error (the attempt goes on in the background and closes what it opened).
// Call it once; after an error, only Close is useful.
func (s *Store) Open() error {
	db, err := s.openDBWithin(s.cfg.OpenTimeout)
	if err != nil {
		return err
	}
	_, closer, err := db.Get(markerKey)
	switch {
	case err == nil:
		s.unclean.Store(true)
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		_ = closeDB(db, closeOldDBTimeout)
		return fmt.Errorf("cannot read unclean-shutdown marker: %w", s.corruption(err))
	}
	if err := s.checkWatermark(db); err != nil {
		_ = closeDB(db, closeOldDBTimeout)
		return err
	}
	if d := s.Damage(); d.LostCommits > 0 {
		s.mu.Lock()
		stops := strings.Join(s.mu.walStops, "; ")
		s.mu.Unlock()
		s.log.Error("write-ahead log damaged: "+d.String()+"; Pebble stopped reading the log at the first record whose checksum failed or that was cut off, and skipped the rest",
			"lost_commits", d.LostCommits, "durable_commit", d.Durable, "log_commit", d.InLog, "wal_replay", stops)
	}
	if err := s.setMarker(db); err != nil {
		_ = closeDB(db, closeOldDBTimeout)
		return fmt.Errorf("cannot write unclean-shutdown marker: %w", err)
	}
	s.dbMu.Lock()
	s.db = db
	s.dbMu.Unlock()
	s.opened.Store(true)
	return nil
}

// setMarker writes the unclean-shutdown marker, turning Pebble's Fatalf on a
// failed WAL write into an error.
func (s *Store) setMarker(db *pebble.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pebble failed: %v", r)
		}
	}()
	return db.Set(markerKey, appendMillis(nil, s.now()), pebble.Sync)
}

// openDBWithin opens Pebble on another goroutine and waits at most d for
// it (or until Close). An open that does not come back in time is left to
// finish in the background and close what it opened.
func (s *Store) openDBWithin(d time.Duration) (*pebble.DB, error) {
	type result struct {
		db  *pebble.DB
		err error
	}
	ch := make(chan result, 1)
	// Not tracked by routines on purpose: pebble.Open may not return while the
	// disk is full, and must not hold up Close.
	go func() {
		db, err := s.openDB()
		ch <- result{db, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	var err error
	select {
	case r := <-ch:
		return r.db, r.err
	case <-t.C:
		err = fmt.Errorf("cannot open pebble database %s: not open after %v (Pebble must write to replay its log): %s; free space on that disk and start again",
			s.cfg.Dir, d, s.storageHint())
	case <-s.quit:
		err = fmt.Errorf("cannot open pebble database %s: %w", s.cfg.Dir, ErrClosed)
	}
	go func() {
		if r := <-ch; r.db != nil {
			_ = closeDB(r.db, closeOldDBTimeout)
		}
	}()
	return nil, err
}

// storageHint describes the last storage error and the free space, for
// messages about a database that will not open or write.
func (s *Store) storageHint() string {
	msg := "no storage error seen"
	if e := s.lastStorageErr.Load(); e != nil {
		msg = "last storage error: " + *e
	}
	if du, err := s.fs.GetDiskUsage(s.cfg.Dir); err == nil {
		msg += fmt.Sprintf("; %d bytes free on the disk", du.AvailBytes)
	}
	return msg
}

func (s *Store) pebbleOptions() *pebble.Options {
	o := &pebble.Options{
		FS:                 s.fs,
		FormatMajorVersion: pebble.FormatNewest,
		Merger:             lastSeenMerger,
		Logger:             pebbleLogger{log: s.log, lim: &s.pebbleErrLog, walStop: s.noteWALStop},
		// 64 MiB memtables: every session is rewritten once per heartbeat
		// interval, so a memtable that holds several intervals of refreshes
		// flushes each session once instead of once per refresh (measured:
		// 16 MiB sustained 15k heartbeats/s on 2 cores, 64 MiB 22.5k+).
		// Costs up to two memtables (128 MiB) of RAM under sustained load.
		MemTableSize: 64 << 20,
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) {
				msg := errLine(err)
				s.lastStorageErr.Store(&msg)
				if ok, suppressed := s.bgErrLog.allow(); ok {
					s.log.Error("pebble background error; retrying with backoff", "err", msg, "suppressed_since_last", suppressed)
				}
			},
			// Pebble's default ends the process (Fatalf) on a bad checksum,
			// often from a compaction goroutine: exit status 2 without a word
			// on which file. Record it instead: Replay fails naming the file,
			// and a running store turns unhealthy.
			DataCorruption: s.noteCorruption,
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

// noteWALStop keeps Pebble's notes of where it stopped reading each WAL
// during the last open (at most 16).
func (s *Store) noteWALStop(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mu.walStops) < 16 {
		s.mu.walStops = append(s.mu.walStops, oneLine(msg))
	}
}

// noteCorruption records the first corruption Pebble reports; it must not
// block (Pebble calls it on read paths).
func (s *Store) noteCorruption(info pebble.DataCorruptionInfo) {
	ce := &CorruptionError{Path: info.Path, Err: info.Details}
	if s.corrupt.CompareAndSwap(nil, ce) {
		s.log.Error("on-disk corruption: the store cannot be trusted; run presenced repair",
			"file", info.Path, "err", info.Details)
	}
}

// corruption turns an error carrying Pebble's corruption details into a
// *CorruptionError naming the file; other errors are returned as they are.
func (s *Store) corruption(err error) error {
	if err == nil {
		return nil
	}
	if info := pebble.ExtractDataCorruptionInfo(err); info != nil {
		return &CorruptionError{Path: info.Path, Err: info.Details}
	}
	if ce := s.corrupt.Load(); ce != nil && errors.Is(err, pebble.ErrCorruption) {
		return ce
	}
	return err
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
) (st ReplayStats, err error) {
	start := time.Now()
	st = ReplayStats{Unclean: s.unclean.Load()}
	defer func() {
		// A damaged file Pebble could not read, or a panic out of Pebble
		// (a broken invariant it found in the data), fails the replay with
		// an error naming what it could, rather than the process.
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot replay sessions: pebble panic: %v", r)
			if ce := s.corrupt.Load(); ce != nil {
				err = fmt.Errorf("cannot replay sessions: %w", ce)
			}
		}
	}()
	s.mu.Lock()
	bad := s.mu.started || s.mu.closed
	s.mu.Unlock()
	if bad {
		return st, fmt.Errorf("cannot replay: %w", ErrNotStarted)
	}
	db := s.db
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: sessionLower, UpperBound: sessionUpper})
	if err != nil {
		return st, fmt.Errorf("cannot replay sessions: %w", s.corruption(err))
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
			return st, fmt.Errorf("cannot replay sessions: %w", s.corruption(verr))
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
		return st, fmt.Errorf("cannot replay sessions: %w", s.corruption(err))
	}
	if err := commit(pebble.Sync); err != nil {
		return st, err
	}
	if ce := s.corrupt.Load(); ce != nil {
		// Found by a background compaction while replaying.
		return st, fmt.Errorf("cannot replay sessions: %w", ce)
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

// Start starts the committer, which commits what Add handed over every
// half Config.FsyncInterval (and at once when someone waits in
// WaitDurable). flush, which may be nil, must hand every change made before
// the call to Add before it returns, without blocking (the server's
// synchronous drain of its change log); the committer calls it when someone
// waits, before it takes the intake, and Close calls it once more before
// the final commit. Start panics if called twice or after Close.
func (s *Store) Start(flush func()) {
	s.mu.Lock()
	if s.mu.started || s.mu.closed {
		s.mu.Unlock()
		panic("persist: Start called twice or after Close")
	}
	s.mu.started = true
	s.c.flush = flush
	s.mu.Unlock()
	s.routines.Go("committer", s.run)
}

// WaitDurable returns once a commit cycle that started after the call has
// committed and fsynced, in every Fsync mode: every change handed to Add
// before the call, and (through Start's flush hook, which that cycle runs
// before it takes the intake) every change made before it, is then durable,
// unless it was dropped (Stats.DroppedChanges). Concurrent callers share one
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
	if ce := s.corrupt.Load(); ce != nil {
		return fmt.Errorf("%w: %w", ErrUnhealthy, ce)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.health
}

// Close is CloseContext without a deadline of its own.
func (s *Store) Close() error { return s.CloseContext(context.Background()) }

// CloseContext stops the committer, runs the flush hook one last time,
// stops intake (a later Add drops), commits with an fsync, clears the
// unclean marker (only if that commit succeeded) and closes the database.
// Waiters still queued get the final cycle's result. If the database is
// being reopened after a fatal error, it waits for that until ctx ends;
// changes it cannot write then are lost (logged), the marker stays, and
// the next start reports an unclean shutdown and replays the log as of the
// last good commit.
func (s *Store) CloseContext(ctx context.Context) error {
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
	s.routines.Wait()

	var err error
	c := &s.c
	if started && c.flush != nil {
		c.flush()
	}
	s.in.mu.Lock()
	s.in.closed = true
	s.in.mu.Unlock()
	if started {
		if c.broken {
			err = s.reopenFor(ctx)
		}
		if err == nil {
			err = s.cycle(true)
		} else {
			s.mu.Lock()
			waiters := s.mu.waiters
			s.mu.waiters = nil
			s.mu.Unlock()
			for _, w := range waiters {
				w <- err
			}
		}
		if err != nil {
			s.log.Error("closing with changes not written; the next start replays the log as of the last good commit",
				"err", errLine(err), "pending_bytes", c.p.pendingBytes)
		}
	}
	if started && err == nil && c.commitSeq != c.wmSeq {
		if werr := s.writeWatermark(c.commitSeq); werr != nil {
			s.log.Warn("cannot record the durable commit at close", "err", errLine(werr))
		}
	}
	if c.wmFile != nil {
		_ = c.wmFile.Close()
		c.wmFile = nil
	}
	if s.db != nil && err == nil && !c.broken {
		if derr := s.apply(func(db *pebble.DB) error { return db.Delete(markerKey, pebble.Sync) }); derr != nil {
			err = fmt.Errorf("cannot clear unclean-shutdown marker: %w", derr)
		}
	}
	if c.opening != nil {
		closeAbandoned(c.opening)
		c.opening = nil
	}
	s.dbMu.Lock()
	db := s.db
	s.db = nil
	s.dbMu.Unlock()
	if db == nil {
		return errors.Join(err, fmt.Errorf("cannot close store: %w", ErrUnavailable))
	}
	timeout := closeOldDBTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(d)), time.Millisecond)
	}
	if cerr := closeDB(db, timeout); cerr != nil {
		err = errors.Join(err, fmt.Errorf("cannot close pebble database: %w", cerr))
	}
	return err
}

// reopenFor waits for a reopen (starting one at once if none runs) until
// ctx ends; Close uses it to write the last changes after a fatal error.
func (s *Store) reopenFor(ctx context.Context) error {
	c := &s.c
	c.nextOpen = time.Time{}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		err := s.reopen()
		if err == nil || c.opening == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot reopen the database before the close deadline: %w (%s)", ctx.Err(), s.storageHint())
		case <-t.C:
		}
	}
}

// closeDB closes db, turning a panic into an error and giving up (leaking
// the DB) after timeout, for a DB left broken by a fatal error.
func closeDB(db *pebble.DB, timeout time.Duration) error {
	done := make(chan error, 1)
	// Not tracked by Store.routines on purpose: a DB that hangs in Close must not
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
