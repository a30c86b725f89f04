// Package server is one presenced node: the HTTP (fasthttp) and UDP (gnet)
// intake, the checks every heartbeat passes (ids, tokens, limits), the
// queries, the event streams, and the wiring of the presence table
// (shardmap), its write-ahead log (persist), the Redis replication
// (server/internal/cluster) and the event pipeline (server/internal/events).
//
// # Data flow
//
//	UDP datagram ─┐                       ┌─> change log ─pump─┬─> log intake ─> committer ─> Pebble WAL
//	HTTP request ─┼─> checkItem ─> Map ───┤   (changes.go)     └─> cluster writer ─> Redis
//	              │   (ids, token,  Touch │   one goroutine, every 50 ms; neither sink
//	              │    limits)      State │   blocks nor waits for the other; the log
//	              │                       │   skips refreshes within --wal-refresh-margin
//	              │                       └─> events decided by the table (single node):
//	              │                             join/update/leave/occupied/vacated
//	              │                               ──> Debouncer (--leave-delay) ──> Bus
//	Redis Stream pd:events ──XREAD (cluster)──────────────────────────────────────> Bus
//	Bus (ids, ring history --event-history, subscribers by room) ──> SSE streams (stream.go)
//	                                                               └─> WebSocket subscriptions (ws.go)
//	WebSocket heartbeat/leave ──> the same checkItem and Map path as HTTP (transport "ws")
//
// A heartbeat's own work is the table update under one user-shard lock; it
// allocates nothing in steady state and never waits on disk or network
// (unless --fsync=always, where the reply waits for the fsync). Everything
// after the table runs on other goroutines.
//
// # Goroutines
//
// Started through Server.routines (an internal/routine Group) in Start:
//   - the fasthttp server (http.go); each request runs on a fasthttp worker;
//     each event stream has a writer goroutine of fasthttp's (stream.go)
//     that may outlive the request: it never touches the RequestCtx, only
//     the connection's write deadline and the bus;
//   - the gnet engine and its event loops (udp.go), and the --fsync=always
//     ack queue;
//   - the sweeper (sweepLoop): expires sessions every --sweep-interval and
//     publishes their timeouts; closes sweepDone when it returns;
//   - the debounce loop: hands held leaves to the bus when due;
//   - with a data dir or Redis, the change pump (changes.go): drains the
//     table's change log every 50 ms (with a data dir at most a quarter of
//     --fsync-interval) into the log's intake and the Redis writer;
//   - the pprof listener when --pprof-addr is set.
//
// Each WebSocket (ws.go) runs its reader on the goroutine fasthttp hands a
// hijacked connection to, one writer goroutine (the only one writing data
// frames, and the pings) and one pump per subscription (bus.Next into the
// writer's bounded queue); the reader waits for both before it returns.
// They are tracked by the wsHub, which Shutdown closes (1001) and waits for
// right after the bus closes; their sessions are kept then. Any other end
// of a socket ends the sessions it heartbeated with reason disconnect.
//
// The persist committer and the cluster node's writer, reaper, health
// checker, stream reader and event loop are owned by those packages and
// stopped by their Close.
//
// # Locks
//
// The server itself holds no lock on the heartbeat path: the table has its
// own (shardmap: user shard, then room shard), the source limiter and the
// connection caps use atomics. Lock order across packages: a shardmap shard
// lock is held while the change log is drained into the log's intake and
// the cluster intake (their own mutexes, taken inside; the pump, the log's
// flush hook and Shutdown's final drain may drain at once, and each user's
// changes still reach the sinks in order); events.Debouncer's mutex, then
// events.Bus's. Configuration that SIGHUP reloads (keys,
// tokens, limits) sits in atomic pointers (reload.go), never behind a lock.
//
// # Metrics
//
// GET /metrics is served by client_golang (metrics.go): each Server has its
// own prometheus.Registry, never the global one, holding the Go collector
// (runtime/metrics, no stop-the-world), the process collector and
// presenced's families, written by promhttp in the format the scraper
// asks for. The heartbeat path never touches the registry: it adds to
// atomic counters and histograms resolved in New (serverMetrics), which
// the registry reads at scrape time as const metrics; the table, the log,
// the bus, the cluster node and the webhook deliverer are read the same
// way, through their Stats. A scrape takes no shardmap lock (the table's
// counts are atomics).
//
// # Lifecycle
//
// New validates the config and builds everything without I/O (the store
// object too, so handlers that run during Start see it). Start starts HTTP
// first (/livez answers, /readyz says 503), connects the cluster, opens and
// replays the log, starts UDP and the background goroutines, then turns
// ready; the change pump starts after the log is replayed into the table.
// --fsync=always replies wait in the log's WaitDurable, whose flush hook
// drains the change log on the spot (into both sinks) rather than waiting
// for the pump. Shutdown runs once: /readyz fails, the drain delay passes,
// the bus closes (streams end), UDP and HTTP stop, the sweeper and the
// change pump stop, a final drain hands every change to the log and the
// Redis writer, the log commits and closes, the Redis writer flushes, and
// the remaining goroutines are waited for, each step logged with its
// duration and the whole bounded by the caller's context
// (--shutdown-timeout).
package server
