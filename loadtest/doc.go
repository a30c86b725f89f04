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
// # Batches
//
// Each UDP socket is a blocking socket of its own, connected to the
// target. Its sender wakes when the next job is due and sends every job
// due by then, up to 64, in one sendmmsg(2); its receiver takes whatever
// acks are queued, up to 64, in one recvmmsg(2) (MSG_WAITFORONE) and
// matches each by seq. Flat out, one core of the benchmark machine spends
// 1.2 µs per datagram without acks and 2.3 µs with its ack matched
// (loadgen_us_per_datagram in the JSON), most of it in the kernel: the
// generator is not the limit below several hundred thousand a second. At
// low rates it sends about one datagram per wake-up and costs more per
// datagram, but a small share of its core. --flat-out drops the schedule: each sender sends full batches
// for the step's --duration; --no-ack sends datagrams that ask for no
// ack, so only the server can say what it took in (--target-metrics).
//
// # Where the limit is
//
// The generator and the server should not share a core. Pin them apart:
// the server with taskset (taskset -c 1 presenced serve ...), the
// generator with --cpu 0 (it re-executes itself from a thread pinned to
// those CPUs; equivalent to taskset -c 0 presenced loadtest ...). Each
// step then reports, besides its own figures:
//
//   - the generator's CPU from getrusage(2) (loadgen_cpu_pct, of one core,
//     against the cores it may use) and how long its threads waited for a
//     core (loadgen_wait_pct, /proc/self/task/*/schedstat);
//   - with --target-pid, the server's CPU from /proc/<pid>/stat, its wait
//     for a core from /proc/<pid>/task/*/schedstat, and the cores its
//     affinity allows; the pid is used rather than the server's
//     process_cpu_seconds_total because the do-nothing targets do not
//     export one, so every target is measured the same way;
//   - with --target-metrics, the server's own counts from its /metrics
//     (presenced_udp_datagrams_total, presenced_udp_replies_total,
//     presenced_heartbeats_total, presenced_wal_records_total): intake
//     without acks, log records per heartbeat, CPU per heartbeat; and the
//     kernel drops the server counts itself (presenced_udp_kernel_drops_total,
//     reported_kernel_drops, -1 when the target lacks it, so also from a
//     remote target) and whether it ended the step shedding
//     (presenced_overload_shedding);
//   - the datagrams the server's socket queue dropped (its port in
//     /proc/net/udp) and all UDP queue drops (/proc/net/snmp);
//   - limit: which side held the step back, "generator CPU", "server CPU"
//     or "loss" (dropped with neither side out of CPU), or "none". Busy
//     time plus time waiting for a core counts as out of CPU: on a shared
//     machine other processes take the rest, and the report says how much.
//
// --serve null-udp|raw-udp|null-http runs a do-nothing target as a process
// of its own (so it can be pinned like presenced), with /metrics on
// --http-addr under presenced's counter names (served by client_golang,
// as presenced's are). loadtest/bench.sh drives
// every comparison this way; --name labels a run in the report.
//
// # Baselines
//
// The same generator can drive do-nothing targets started in-process
// (a gnet UDP receiver, a raw recvmmsg/sendmmsg receiver, a fasthttp
// handler) and Redis SET ... EX (plain and pipelined), so presenced's
// figures can be read as a ratio of what the machine and the generator
// can do at all. In-process targets share the generator's CPUs; for
// figures about the server's side run them with --serve, pinned.
//
// # Abuse scenario
//
// --flood-rate adds one abusive source beside the users: --flood-sockets
// UDP sockets bound to --flood-source (default 127.0.0.2; Linux routes all
// of 127.0.0.0/8 to lo, so no setup is needed) send to --udp-addr, paced at
// the rate or, with -1, as fast as one goroutine per socket can. The flood
// is --flood-kind valid (a heartbeat of one user, ack requested, so only
// the server's limits keep it from being answered) or garbage (random bytes
// that never decode). It runs for each step of the target's run (never for
// baselines), has its own counters (sent/s, replies/s and their statuses)
// and is reported beside the step: the users' latency and loss never
// include it. --source-ip binds the users' sockets and HTTP connections to
// an address, a list or a CIDR prefix, round robin: presenced limits each
// source IP (--source-rate, default 2000 heartbeats/s), so a load of more
// than that must come from several addresses, as real users do.
//
// --check-online asks presenced after each run (POST /v1/status on
// --http-addr, 1000 users a request, --api-token as a bearer token) how
// many of the simulated users are offline; with a short server --ttl it
// shows whether any session expired. Only the users the run sent a
// heartbeat for are checked: a run shorter than --interval reaches only
// part of them, and reports the others as not reached. A step that is not
// sustainable says why ("not ok: p99 ... > --target-p99 ...", in the text
// report, the HTML ok column and not_ok in JSON). --compare-flood runs the target
// twice, without the flood and then with it, and reports both p99s, their
// ratio and both offline counts (text, and flood_comparison in JSON):
//
//	presenced serve --ttl 5s --interval 2s --data-dir ''
//	presenced loadtest --users 10000 --interval 2s --duration 15s --source-ip 127.0.1.0/28 \
//	    --flood-rate -1 --compare-flood --check-online
//
// # Concurrency
//
// Main runs one target at a time and one step at a time. Within a step,
// counters are atomics and each latency histogram shard has its own mutex;
// a progress goroutine merges shards once a second. Every goroutine a step
// starts (the flooder's included) is waited for before the step returns;
// every loop is bounded by the step's job count and by its deadline.
package loadtest
