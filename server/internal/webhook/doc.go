// Package webhook POSTs presenced's events to a receiver (--webhook-url)
// in signed batches, at least once, in order per room (README "Webhooks").
//
// # Flow
//
//	single node: Bus (after the leave debounce) ──> pump ──> queue ──> Deliverer ──> POST
//	             queue: persist.Queue with --data-dir (synced), memory without
//	cluster:     pd:events ──> consumer group "presenced-webhooks" ──> lease holder's Deliverer ──> POST
//
// A batch is {"events":[...]}, each element the event's JSON exactly as SSE
// data carries it, at most Config.Batch events, sent at most Config.Linger
// (under 1 s) after its oldest event was queued. It is signed with the first
// key of --webhook-secret-file: X-Presenced-Signature: t=<unix>,v1=<hex
// HMAC-SHA256(secret, "<t>.<body>")> (Sign, Verify, example/verify.py).
//
// # Delivery promise
//
// One batch is in flight per deliverer and, in a cluster, one deliverer
// delivers at a time (the lease holder), so events arrive in stream order,
// which is per-room order. A batch is removed from the queue (single node)
// or XACKed (cluster) only after a 2xx, or when it is dead-lettered: the
// receiver answered a 4xx other than 408 and 429 (not retried), or it was
// still undelivered after Config.MaxAge. Anything else (5xx, 408, 429, no
// answer) is retried with exponential backoff from 100 ms, capped at
// Config.MaxBackoff, with jitter. So a receiver sees every event at least
// once and must de-duplicate by id. Not handled: after a claim in a cluster
// (a node died mid-batch), the claimed batch may arrive after newer events
// the new lease holder read first; a single node without --data-dir
// loses its queue when it stops; and on a single node, events decided
// after Shutdown closed the bus (while intake drains) reach neither the
// streams nor the queue.
//
// A single-node queue holds at most Config.MaxQueue events; beyond it new
// events are dropped, counted (Stats.Lost) and replaced by one reset event
// (reason history_lost) once there is room. In a cluster the stream's own
// cap (--redis-stream-max-len) is the bound: see redis.go for how a trim
// past undelivered events is detected and turned into a reset.
//
// # Hot path
//
// Nothing here runs on the heartbeat path: the pump reads the bus like an
// SSE stream does (the bus never blocks on it; a pump that falls behind
// re-reads the bus history or gets a reset), and a slow receiver only
// lets the queue grow.
//
// # Concurrency
//
// Each Deliverer runs one delivery goroutine, plus the pump (single node)
// or the lease loop (cluster). Stats is safe for concurrent use; Stop
// cancels an in-flight POST (its batch stays queued or pending) and waits
// for the goroutines.
package webhook
