// Package shardmap is presenced's in-memory presence table.
//
// # What it owns
//
// Sessions keyed by (user, room), their expiry, the per-room member lists and
// online counts, the global counts (online users, sessions, rooms) and, with
// Config.TrackChanges, a change log for persistence and replication. It does
// no I/O, no logging and reads no clock: every method that needs the time
// takes now (unix milliseconds) from the caller, so tests are deterministic.
// A session expires ttl after its last heartbeat; it is removed (with a
// timeout leave event) by the next Expire call at or after its expiry, and
// counts as live until then.
//
// # Concurrency
//
// A Map is safe for concurrent use. Users are spread over Config.Shards user
// shards by a 64-bit hash of the id; all sessions of a user live in the
// user's shard, so a heartbeat or a status query takes one user-shard lock.
// Rooms are interned in a separate room table, sharded by room hash, each
// shard with its own lock. Counts are atomics, read without locks.
//
// Lock order: a user-shard lock, then a room-shard lock; never the reverse,
// and never two locks of the same kind at once. Members therefore copies the
// member slots under the room lock, releases it, and resolves each slot under
// its user's shard lock, checking a generation to skip users freed or reused
// in between. Drain's callback runs under a user-shard lock and must not call
// back into the Map; Range's callback runs unlocked.
//
// # Memory layout
//
// The big structures hold no pointers, so the garbage collector does not scan
// them however many sessions there are:
//
//	user shard (one of Shards, chosen by hash(user) & (Shards-1))
//	+-------------------------------------------------------------------+
//	| index  []uint32   open addressing, linear probing: user index     |
//	|          (probe start and 24-bit tag from hash; tag kept in rec)  |
//	| arena  []byte     user ids, 8-byte size classes, free lists       |
//	| users  chunks of 512 userRec (16 B):                              |
//	|          off -> arena  head -> first session  tag|len  gen nsess  |
//	| sess   chunks of 512 sessRec (36 B):                              |
//	|          user  room(ref)  next(same user)  wprev wnext  slot      |
//	|          lastSeen(64 bit)  ttl(31 bit)|dirty                      |
//	| wheel  []uint32   WheelSlots heads of doubly linked session lists |
//	|          slot = (expiry/Tick) % WheelSlots                        |
//	| changes []changeRec + endBuf []byte   (TrackChanges only)         |
//	+-------------------------------------------------------------------+
//	        user -> s1 -> s2 -> 0            (a user's sessions)
//	        wheel[k] <-> s7 <-> s1 <-> s9    (sessions expiring in tick k)
//
//	room shard (one of RoomShards, chosen by hash(room) & (RoomShards-1))
//	+-------------------------------------------------------------------+
//	| index  []uint32   room index              arena []byte room ids   |
//	| rooms  []roomRec: off,len  online  gen  freeSlot                  |
//	|          members []uint64, one slot per session in the room:      |
//	|            gen(15) | user shard(16) | user idx(32), or free|next  |
//	+-------------------------------------------------------------------+
//	room ref in a session = room index << log2(RoomShards) | room shard
//
// At 1M sessions (16-byte user ids, 1000 rooms, default config) this is
// about 90 heap bytes per session: 36 session + 16 user + 16 arena + ~8
// index + ~9 member slot + chunk and wheel overhead (BenchmarkMemory1M).
//
// Index 0 means "none" in every table. Freed records go to free lists and are
// reused; an arena with more than half its bytes free is compacted in place;
// the index tables grow at 3/4 load and shrink below 1/8. Record tables keep
// their high-water mark in chunks of 512 records. Room records hold a slice
// each (the member slots); there are far fewer rooms than sessions. A member
// keeps its slot for its session's life; a freed slot is reused, and a room
// with no members is freed.
//
// # Expiry
//
// Each user shard has a timing wheel: a session sits in the slot of its
// expiry tick or an earlier one. A refresh only moves the expiry later, so
// it leaves the session where it is (unlinking and relinking would touch
// two neighbours and a slot head, cache misses in a big table); when Expire
// reaches a slot it moves each session not yet due to the slot of its
// expiry, once per expiry it outlived. A change that brings the expiry
// earlier relinks at once. Expire processes, per shard, the slots
// of the ticks since its previous call (at most WheelSlots) and ends the
// sessions there whose expiry is <= now; sessions a turn or more away stay.
// The tick of now is only partly processed, so it is looked at again next
// time. No call ever scans all sessions.
package shardmap
