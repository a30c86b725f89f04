// Package loadtest is presenced's load generator: `presenced loadtest`.
//
// It simulates users heartbeating into rooms and drives a target over UDP
// (the datagram format of PROTOCOL.md), HTTP (/v1/heartbeat and
// /v1/heartbeats), or, for the Redis baselines, the Redis protocol. It
// speaks the wire protocol as any client would: it imports only the leaf
// codec packages server/wire and server/token, never server.
//
// # Open loop
//
// The schedule is fixed before the run starts: job k of a sender is due at
// epoch + phase + k/rate (with optional jitter inside its own slot, which
// keeps the order). A sender that falls behind sends at once and never
// skips a job, and latency is measured from the job's intended time, not
// from when it left. A stalled target therefore shows as latency in the
// HDR histogram, not as a slower sender (no coordinated omission).
//
// UDP requests carry a per-socket seq; the intended time of each request
// sits in a ring slot indexed by seq, tagged with the seq's high bits, and
// whoever clears the slot first owns the request: the receiver (answered)
// or the sender's expiry cursor (lost after --ack-timeout). HTTP and Redis
// jobs go through a queue to a fixed pool of workers, so a slow answer
// delays later jobs in the queue, where their latency keeps counting.
//
// # Baselines
//
// The same generator can drive do-nothing targets started in-process
// (a gnet UDP receiver, a raw recvmmsg/sendmmsg receiver, a fasthttp
// handler) and Redis SET ... EX (plain and pipelined), so presenced's
// figures can be read as a ratio of what the machine and the generator
// can do at all.
//
// # Concurrency
//
// Main runs one target at a time and one step at a time. Within a step,
// counters are atomics and each latency histogram shard has its own mutex;
// a progress goroutine merges shards once a second. Every goroutine a step
// starts is waited for before the step returns; every loop is bounded by
// the step's job count and by its deadline.
package loadtest
