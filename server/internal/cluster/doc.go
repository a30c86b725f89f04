// Package cluster replicates a node's presence to Redis so identical
// presenced nodes behind a load balancer answer as one.
//
// # What it owns
//
// The Redis layout below, one background writer that turns the presence
// table's change log into pipelined script calls, a reaper that expires the
// sessions of every node (including dead ones), a stream reader (XREAD) that
// feeds this node's event stream with the cluster-wide joins and leaves, a
// health checker that re-asserts this node's sessions after Redis lost them
// or could not be reached, and the cluster-wide queries. It never imports
// package server: the server gives it a Range function (re-assert) and an
// event callback, and offers changes from its drain.
//
// # Concurrency
//
// Offer runs as the shardmap drain callback, under a user-shard lock: it
// copies the change into the intake buffer under the node's intake mutex
// and never blocks (beyond Config.MaxQueue changes it drops and schedules a
// re-assert). One writer goroutine owns everything else the writer needs
// (the per-session state and the deferred-refresh ring) and is the only
// goroutine that writes sessions. The reaper, the health checker and the
// subscriber each run in their own goroutine; the queries run on the
// caller's goroutine. All share one go-redis client, which is safe for
// concurrent use. Besides the intake mutex, two small locks guard rare
// transitions: the health state (partial/whole, what was logged) and the
// set of cancellable writer and reaper rounds.
//
// # Redis layout
//
// Every key starts with Config.Prefix ("pd") and carries a hash tag, so
// each script touches one Redis Cluster slot. Users are spread over 64 user
// buckets and rooms over 64 room buckets (fnv-1a 64 of the id, mod 64); the
// bucket is the hash tag. Nothing global is written on the heartbeat path:
// global counts are per-bucket counters summed on read.
//
//	user bucket b = fnv(user) % 64, tag {u<b>}
//	+-----------------------------+-----------------------------------------+
//	| pd:{u<b>}:u:<user>   HASH   | field room ("" = online only)           |
//	|                             |   -> "<expiry ms>:<lastSeen ms>"         |
//	| pd:{u<b>}:x          ZSET   | member "<user>\0<room>", score expiry   |
//	|                             |   (what the reaper walks)               |
//	| pd:{u<b>}:c          HASH   | s: sessions, u: online users of bucket, |
//	|                             | n:<node-id>: re-assert marker per node  |
//	| pd:{u<b>}:l:<user>   STRING | last seen ms of an offline user,        |
//	|                             |   PX LastSeenRetention                  |
//	+-----------------------------+-----------------------------------------+
//	room bucket r = fnv(room) % 64, tag {r<r>}
//	+-----------------------------+-----------------------------------------+
//	| pd:{r<r>}:m:<room>   ZSET   | members, all score 0: ordered by id,    |
//	|                             |   paged with ZRANGE BYLEX               |
//	| pd:{r<r>}:top        ZSET   | member room, score = online users       |
//	+-----------------------------+-----------------------------------------+
//	pd:events   STREAM   every event, XADD MAXLEN ~ StreamMaxLen; nodes XREAD it
//	            (and the held-leave keys beside it: events.go)
//
// A session (user, room) exists cluster-wide while its field is in the user
// hash; its expiry is the latest any node wrote (the scripts never move it
// back). The user side decides join and leave atomically in one script on
// one slot: TOUCH answers 1 when it created the field (a join: the first
// live session of that user in that room on any node), LEAVE and REAP
// answer what they removed (a leave). Only the node whose script made the
// decision then updates the room side (ROOMADD/ROOMREM: member set and the
// bucket's top set), appends the event to the stream and publishes it, so
// every node's event stream carries each event once. Two nodes reaping one
// bucket each remove different sessions: REAP pops and deletes under the
// script's atomicity.
//
// Commands, by path:
//
//	refresh or join    EVALSHA TOUCH (1 command; HGET, HSET, ZADD, HINCRBY inside)
//	join, also         EVALSHA ROOMADD, EVALSHA EMIT (XADD, or hold a leave)
//	explicit leave     EVALSHA LEAVE, then ROOMREM, EMIT if it ended one
//	reaper             EVALSHA REAP per bucket per ReapInterval, ROOMREM/EMIT per timeout
//	health             HEXISTS pd:{u<b>}:c n:<node> per bucket per HealthInterval
//	re-assert          EVALSHA TOUCHN / ROOMADDN, 256 sessions per call
//	room sweep         ZRANGE top and member sets, HEXISTS per member, ROOMREM,
//	                   ROOMSYNC per room (after a fault only)
//	user, bulk status  HGETALL + GET per user, one pipeline
//	room count         ZSCORE pd:{r<r>}:top room
//	members            ZRANGE BYLEX LIMIT, then HGET per member (last seen, liveness)
//	top rooms          ZREVRANGE WITHSCORES over the 64 top sets, merged
//	stats              HMGET s u + ZCARD top, over the 64 buckets
//
// Memory per session, measured on Redis 7.0 with 100,000 users (21-byte
// ids) in 1,000 rooms: about 310 bytes for a user's first session (user
// hash, expiry-set member, room member) and 220 for each further session of
// the same user in another room; 1M sessions of distinct users is about
// 300 MB. The event stream adds about 100 bytes per entry up to
// StreamMaxLen (100,000 by default: about 10 MB).
//
// # Writes off the hot path
//
// The heartbeat path is untouched: it updates the presence table, whose
// change log coalesces every refresh of a session between two drains into
// one change. The writer keeps, per session (a pointer-free map keyed by a
// 64-bit hash of user and room, seeded per process so clients cannot craft
// collisions), the expiry it last wrote (W) and the latest local one (L).
// A new session is written at once (a join is
// prompt); a refresh is not written until W is within RefreshMargin of now,
// and then with the latest L. With a 60 s interval and 150 s TTL that is
// one write per two heartbeats. Explicit leaves are written at once. A
// local expiry writes nothing: Redis expires the session itself unless
// another node keeps it alive. The deferred refreshes sit in a ring of
// slots (records in byte buffers, no pointers).
//
// # Failure
//
// A dead node writes nothing more: its sessions' Redis expiries stand at the
// last refresh it wrote, so sessions kept alive through other nodes live on
// (their writes move the expiry), the others are reaped by the survivors
// within ReapInterval of that expiry, at most TTL after their last
// heartbeat (up to RefreshMargin earlier when the dead node had a refresh
// deferred). A clean Close writes every deferred refresh and removes
// nothing, so a user who goes on heartbeating elsewhere never sees a leave.
//
// # Faults, failovers and reshards
//
// Any failed round trip is a fault (health.go): Redis unreachable, a health
// check not answered within HealthInterval + 1 s (a hung master), a write
// round not answered within 10 s, CLUSTERDOWN or READONLY
// during a failover, OOM under maxmemory, NOSCRIPT after SCRIPT FLUSH, a
// redirect beyond 3 hops. On a fault the node stops answering for the
// whole cluster: the queries fail at once with ErrPartial and the server
// answers from its own table with "partial": true (presenced_redis_up 0,
// presenced_redis_partial_seconds_total counts the time). The Redis Cluster
// client is asked to re-read the slot map then and there (go-redis itself
// re-reads it only on MOVED, or every 60 s: a failed-over master's slots
// pointed at the dead address until then, so without the re-read a node
// would stay partial after a failover), and the slot map comes from CLUSTER SLOTS
// asked of every known node at once with a 1 s bound (slots.go; go-redis
// asks one node at a time and waits its whole read timeout on a hung
// one). A failed health check also cancels the
// writer's and reaper's rounds in flight. While partial, refreshes are
// dropped (the re-assert writes them); joins, explicit leaves, and touches
// and leaves that failed, are kept (bounded) to be sent again.
//
// When the next health check answers, the writer sends what it kept, then
// re-asserts: every live session of this node (TOUCHN, no events for those
// Redis lacked; a session whose join or state change the writer has not
// written yet, still in the change log, goes as a TOUCH with its event),
// every one of them re-added to its room (ROOMADDN,
// idempotent: this repairs a room side whose pipeline failed after the
// user side succeeded), the markers; the node is whole again and logs it
// once ("redis answers again"). The next round sweeps the rooms: a member
// without a session (its ROOMREM failed or was lost with a master) is
// removed, and each room's count is set to its member list (ROOMSYNC); a
// second ROOMADDN pass, 2 health intervals later, catches a reaper's
// ROOMREM that was in flight during the re-assert. A missing marker (Redis
// restarted empty, or a promoted replica that lacks recent writes) is a
// fault too. Joins and leaves decided while partial are not replayed as
// events, except the kept ones; an explicit leave dropped past the bound
// ends in Redis as a timeout.
//
// Writes are never resent by go-redis after a network error (a script
// that ran twice answers "not new" the second time and the join loses its
// room update and event); MOVED and ASK, which mean the command did not
// run, are followed, so a live reshard (redis-cli --cluster reshard) costs
// no fault. Every new connection loads the scripts first (OnConnect), so a
// restarted or promoted master knows them before its first EVALSHA.
//
// The time from a healthy engine (cluster_state:ok, or a Sentinel
// promotion) to whole answers is decided by: HealthInterval (1 s: the
// next check that succeeds), the health check's deadline of
// HealthInterval + 1 s when the slot map still names a hung master, one
// dial attempt against a dead one (refused at once), the slot map reload
// (at most slotsTimeout, 1 s), and the re-assert (about 1 s per 100,000
// sessions of the node); the writer round in flight is cancelled by the
// failed check. With the defaults that is at most about 4 s; measured in
// the failover tests (HealthInterval 200 ms): see BENCHMARKS.md.
//
// Nodes must agree on TTL and Prefix and keep their clocks within
// RefreshMargin of each other (expiries are wall-clock milliseconds).
package cluster
