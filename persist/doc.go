// Package persist makes the in-memory presence map durable: a write-ahead
// store on Pebble that logs session changes (join, refresh, leave, expiry) and
// the per-user last-seen time, and replays them at start.
//
// # What it owns
//
// One Pebble database in Config.Dir. The server opens it, calls Replay once
// (feeding live sessions to shardmap.Map.Restore and emitting timeout leaves
// for sessions that expired while the node was down), then Start with its
// flush hook. persist drains nothing itself: the server's change pump
// drains the map's change log (coalesced: one change per dirty session per
// drain, however many heartbeats arrived) and hands each change to Add,
// which encodes it into the intake under a mutex and never waits on disk.
// A single committer goroutine owns every write: at the start of each
// cycle it swaps the intake out and commits it as one Pebble batch. The
// same goroutine runs the last-seen sweep, in chunks, between cycles, so
// there is never more than one writer.
//
//	server's pump ──Add──> intake (mutex; swapped each cycle) ──> committer ──> Pebble batch, fsync
//	WaitDurable ──> next cycle: flush hook (the server drains its change log
//	                into Add at once), then swap and commit
//
// # On-disk key layout
//
// Every key starts with a one-byte tag; the tags keep the four kinds in
// disjoint, contiguous key ranges, so Replay and the sweep are range scans
// and the compaction after churn is one range.
//
//	unclean-shutdown marker (at most one key)
//	+-----+-----------+          +--------------------------+
//	| 'm' | "unclean" |    ->    | opened at, unix ms (8 BE)|
//	+-----+-----------+          +--------------------------+
//	Set (synced) by Open, deleted (synced) by a clean Close. Finding it at
//	Open means the previous process did not close the store.
//
//	commit counter (one key)
//	+-----+-----------+          +--------------------------+
//	| 'm' | "commit"  |    ->    | commit number (8 BE)     |
//	+-----+-----------+          +--------------------------+
//	Set in every committed batch to that batch's number. Beside Pebble's
//	files, PRESENCED-WATERMARK holds the last number known synced
//	(8 BE + CRC32-C, fsynced, rewritten at most once a second and at
//	Close): see "Damaged files" below.
//
//	session record, one per live (user, room)
//	+-----+------------+---------------+---------------+
//	| 's' | len(user)  | user          | room          |
//	|     | 1 byte     | 1..128 bytes  | 0..128 bytes  |
//	+-----+------------+---------------+---------------+
//	  ->  +----------------------+----------------------+-----------------+
//	      | lastSeen ms (8 BE)   | expiry ms (8 BE)     | state (0..max)  |
//	      +----------------------+----------------------+-----------------+
//	Set on every upsert, deleted when the session ends (leave or expiry,
//	including expiries found by Replay). The state, the session's JSON
//	object, fills the rest of the value; a 16-byte value has none (stores
//	written before state existed read the same way). A session with named
//	connections stores instead all of them, each with its own times and
//	state, in shardmap's durable form (first byte 0x00, never the first
//	byte of a JSON object); lastSeen and expiry are then the latest over
//	its connections. Stores written before connections existed replay
//	unchanged: every session there is a plain one.
//
//	last-seen record, one per user seen within the retention
//	+-----+---------------+          +--------------------------+
//	| 'u' | user          |    ->    | lastSeen ms (8 BE)       |
//	+-----+---------------+          +--------------------------+
//	Written when a session ends (leave, expiry, or an expiry found by
//	Replay): a live session's last-seen is in its session record, so a
//	refresh costs one record. Written with Pebble Merge under a max-int64 merger
//	("presenced.lastseen.max.v1"), so the stored value never moves backwards
//	whatever order sessions of one user are drained in. Deleted by the sweep
//	once older than Config.LastSeenRetention.
//
//	delivery queue record, one per webhook event not yet delivered (queue.go)
//	+-----+------------------+        +--------------------+-----------+
//	| 'q' | seq (8 BE)       |   ->   | enqueued ms (8 BE) | record    |
//	+-----+------------------+        +--------------------+-----------+
//	Appended (synced) in seq order by the webhook deliverer, deleted with
//	one range delete (not synced: a lost delete only redelivers) once
//	delivered or dead-lettered; Replay ignores it.
//
// The sweep walks the whole 'u' range every Config.SweepInterval (in chunks
// of sweepChunk keys, so commits are never held up for long): its cost is
// bounded by the number of retained users (about 30 bytes read per user per
// sweep), not by history. A time-ordered index would make the sweep touch
// only expired users, but would cost a second record (or a read before write)
// for every last-seen update on the hot commit path; at one sweep an hour a
// sequential scan is the cheaper side of that trade.
//
// # Durability promise per Config.Fsync
//
//   - interval (default): a cycle runs every half Config.FsyncInterval
//     (50ms of the default 100ms) and commits with an fsync, so a change is
//     durable at most FsyncInterval/2 + one commit after it was handed to
//     Add. The server's pump hands a change over at most a quarter of the
//     interval after it was made, so a crash (kill -9 or power loss) loses
//     at most the last FsyncInterval of changes as long as a commit with
//     its fsync takes under a quarter of it.
//   - always: as interval, and WaitDurable(ctx) returns only after a cycle
//     that started after the call has been fsynced; concurrent waiters share
//     that cycle and its fsync, and a waiter starts a cycle at once. A
//     cycle with waiters first calls Start's flush hook, which hands every
//     change made before it to Add (the server drains its change log on
//     the committer's goroutine), then swaps the intake: every change made
//     before WaitDurable was called is in that cycle's batch.
//   - off: cycles write the WAL to the OS every FsyncInterval but never
//     fsync it: a process crash (kill -9) loses at most the last interval,
//     power loss may lose whatever the OS had not written back. (Pebble's
//     own NoSync can leave data in Pebble's buffer, lost even on kill -9, so
//     off mode commits with pebble.Sync through an FS wrapper whose WAL
//     fsync is a no-op; sstables and the MANIFEST are still synced.)
//     WaitDurable then only guarantees the OS has the changes.
//
// With Config.RefreshMargin M the promises above hold for joins, state
// changes and ends; a plain refresh may not be written (the record the log
// holds is kept while its expiry is at least M after the heartbeat). For a
// client that heartbeats every I, a crash then restores its session with an
// expiry at least M-I-FsyncInterval after the crash and a last-seen at most
// TTL-M+FsyncInterval old (TestRefreshMarginCrashPromise). Map.Relog before
// the final cycle writes every session's current times (a clean shutdown).
//
// The heartbeat path never waits on disk: only WaitDurable does.
//
// # Disk faults
//
// A failed commit (write or fsync of the WAL) is logged (at most once per
// errorLogMinInterval), counted, and makes Healthy return an error (State
// StateFailing) until a commit succeeds again; the changes of the failed
// cycle stay in the pending backlog and are retried next cycle, ahead of
// newer ones (the next intake is appended behind them). Add keeps taking
// changes meanwhile, so the server's pump, and the replication it feeds,
// never wait for a failing or hanging disk. Pebble treats a WAL write or sync error as fatal for the DB
// instance (its commit pipeline is left unusable, and by default it calls
// os.Exit). persist gives Pebble a Logger whose Fatalf panics; on the
// committer goroutine that panic is recovered and the DB instance is closed
// and opened again (replaying its WAL up to the last intact record); the
// backlog is then applied to the new instance. Records are idempotent final
// states, so applying a cycle twice is harmless.
//
// The reopen never makes anyone wait on Pebble: the close and pebble.Open
// run on a goroutine of their own (StateUnavailable meanwhile; db is nil,
// so LastSeen answers ErrUnavailable and Stats answers at once), the
// committer only looks each cycle whether the attempt is done, and failed
// attempts are retried with a backoff (reopenBackoffMin doubling to
// reopenBackoffMax). This matters on a full disk: pebble.Open flushes the
// log it replays and retries that flush forever. Pebble retries failed
// flushes at once, so backoffFS delays the creation of non-WAL files after a
// failed write (writeBackoffMin doubling to writeBackoffMax), and its error
// lines are rate-limited. Open gives up after Config.OpenTimeout with the
// last storage error and the free space; CloseContext gives up at its
// context's deadline (the unclean marker then stays).
//
// If the backlog and the intake together grow past Config.MaxPendingBytes
// (default 64 MiB) while the disk keeps failing, further changes are
// dropped (by Add, at once) and counted in
// Stats.DroppedChanges (a dropped session upsert is written again by the
// next change of that session; a dropped delete leaves a record that Replay
// will later treat as expired). A Fatalf on one of Pebble's own goroutines
// (a flush or compaction that cannot write the MANIFEST) cannot be
// recovered: it ends the process with status 1 and the reason. WAL
// failover to a second disk (Pebble's Options.WALFailover) is not
// configured.
//
// # Damaged files
//
// Every WAL record and sstable block carries a CRC32-C. A block that fails
// its checksum is reported by Pebble's DataCorruption event; persist
// records it (State StateCorrupt) instead of letting Pebble's default end
// the process, and Open or Replay fail with a *CorruptionError naming the
// file (errors.Is ErrCorrupt). Repair moves such a store aside and copies
// every record that can still be read into a new one; around a damaged
// block it searches for the first key a read succeeds at again, so only
// the damaged block's key range is lost.
//
// A damaged WAL is not visible to Pebble: it reads the last log up to the
// first record that fails its checksum or is cut off and treats the rest
// as the torn tail of a crash, so garbage in the middle, a log cut short or
// an emptied log replay as an older state. The commit counter and the
// watermark catch this: a log whose counter is below the watermark lost
// that many synced commits, which Open logs at error level and Damage and
// Stats.LostCommits report. Not covered: commits of the last second before
// the damage (the watermark lags by up to watermarkInterval) and a damaged
// watermark (ignored). Nothing is repaired: what the log lost is gone.
//
// # Concurrency
//
// New builds a Store without I/O; its read methods are safe at once, so a
// server can publish it before Open. Open, Replay and Start are then called
// once, in that order, from one goroutine (Open(cfg) is New plus Open).
// Add, WaitDurable, LastSeen, Healthy, State, Damage and Stats are safe for
// concurrent use at any time and never wait on a failing disk (Add is
// called under the caller's shardmap lock: it only appends under the
// intake's mutex). Close (or CloseContext) may be called once; it stops
// the committer, calls the flush hook once more, stops intake (a later Add
// is dropped and counted), runs a final synced commit, clears the unclean
// marker and closes the database.
//
// Lock order: Store.dbMu (RWMutex: readers and the committer's writes hold it
// shared, a reopen holds it exclusively only to swap the pointer, never
// across a Pebble call) before Store.mu. The intake's mutex (Store.in.mu)
// is a leaf: held only to append a change or swap the intake, with no
// other lock of the Store. The flush hook is called with no lock held. The goroutines of a reopen, of an
// open that timed out and of closeDB are not tracked by the WaitGroup on
// purpose: they may not return while the disk is full.
package persist
