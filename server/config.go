package server

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/webhook"
	"github.com/presenced/presenced/shardmap"
)

// Config is the whole server configuration. Every field names its flag; the
// flag's default is the field's default. It embeds the configs of the
// packages the server drives.
type Config struct {
	// HTTPAddr is the TCP address of the HTTP API (--http-addr, default 127.0.0.1:7070).
	HTTPAddr string
	// UDPAddr is the UDP heartbeat address (--udp-addr, default 127.0.0.1:7070). Empty disables UDP.
	UDPAddr string
	// DataDir holds the write-ahead log (--data-dir, default ./presenced-data). Empty runs in memory only.
	DataDir string
	// TTL is how long a session lives after its last heartbeat (--ttl, default 150s).
	TTL time.Duration
	// Interval is how often clients are told to heartbeat (--interval, default 60s).
	Interval time.Duration
	// Redis lists the shared store's addresses (--redis, empty: standalone node).
	Redis string
	// RedisMaster is the Sentinel master name (--redis-master).
	RedisMaster string
	// NodeID names this node in the cluster (--node-id, default hostname:http-port,
	// or hostname-random when the port is 0).
	NodeID string
	// SecretFile holds the token keys (--secret-file, empty: open mode).
	SecretFile string
	// AllowOpenReload lets a reload (SIGHUP) take a node that verifies
	// heartbeat tokens or API tokens to open mode, when --secret-file or
	// --api-token-file was removed from the configuration (--allow-open-reload,
	// default false: such a reload is refused and logged at error, so a
	// config edit cannot silently switch authentication off).
	AllowOpenReload bool
	// ConfigFile is the optional config file (--config).
	ConfigFile string
	// LogLevel is debug, info, warn or error (--log-level, default info).
	LogLevel string
	// LogFormat is text or json (--log-format, default text).
	LogFormat string

	// MaxBodyBytes bounds an HTTP request body (--max-body-bytes, default 1 MiB); larger gets 413.
	MaxBodyBytes int
	// MaxBatch bounds the items of POST /v1/heartbeats (--max-batch, default 1000); more gets 413.
	MaxBatch int
	// MaxStatusUsers bounds the users of POST /v1/status (--max-status-users, default 1000).
	MaxStatusUsers int
	// UDPLoops is the number of UDP event loops, each with its own SO_REUSEPORT
	// socket (--udp-loops, default 0: one per CPU).
	UDPLoops int
	// RequireV2 drops v1 UDP datagrams, whose op byte and ids are not
	// signed (--require-v2, default false; needs --secret-file). HTTP is
	// unaffected.
	RequireV2 bool
	// V2MaxClockSkew is how far a v2 datagram's timestamp may be from this
	// node's clock (--v2-max-clock-skew, default 30s): older datagrams are
	// refused as stale, so a captured one can be replayed to another node
	// for at most this long.
	V2MaxClockSkew time.Duration
	// UDPMaxPendingAcks bounds the UDP acks waiting for an fsync under
	// --fsync=always (--udp-max-pending-acks, default 65536, about 100 bytes
	// each); beyond it an ack is dropped (the heartbeat is still applied).
	UDPMaxPendingAcks int
	// UDPReadBuffer is SO_RCVBUF of each UDP socket in bytes (--udp-read-buffer, default 4 MiB).
	UDPReadBuffer int
	// OverloadDropRatio: a check (every second) in which the kernel dropped
	// at least this share of the datagrams offered to the UDP sockets puts
	// the node into shedding (--overload-drop-ratio, default 0.01; 0: never
	// shed). See overload.go.
	OverloadDropRatio float64
	// OverloadBackoff multiplies interval_ms and ttl_ms in replies while
	// the node sheds (--overload-backoff, default 2; 1: replies unchanged).
	// --interval times it must stay below --ttl, so a client that follows
	// it keeps its session after the hold ends.
	OverloadBackoff int
	// OverloadCooldown: shedding ends after this long without a check over
	// the ratio (--overload-cooldown, default 0: 2 x --interval).
	OverloadCooldown time.Duration
	// OverloadMaxHold bounds how long in a row the sweeper holds timeouts
	// for an overloaded node (--overload-max-hold, default 0: 2 x --ttl).
	// After it sessions expire as usual even while the node sheds.
	OverloadMaxHold time.Duration
	// HTTPReadTimeout, HTTPWriteTimeout and HTTPIdleTimeout protect against
	// slow clients (--http-read-timeout 10s, --http-write-timeout 10s, --http-idle-timeout 60s).
	HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	// HTTPMaxConns bounds concurrent HTTP connections (--http-max-conns, default 10000).
	// Over it a connection is answered 503 with a JSON body and closed.
	HTTPMaxConns int
	// HTTPMaxConnsPerIP bounds concurrent HTTP connections from one address
	// (--http-max-conns-per-ip, default 1024; 0: no limit), so one client
	// cannot take every connection; over it, 429 with a JSON body. Trusted
	// proxies are exempt.
	HTTPMaxConnsPerIP int
	// TrustedProxies lists the IPs and CIDRs of load balancers in front of
	// the node (--trusted-proxies, comma-separated, default empty). From
	// them, HTTP requests are charged to the client named by
	// X-Forwarded-For / X-Real-IP, UDP datagrams are not charged to the
	// per-source limit (each session is still bound by --heartbeat-min-gap
	// and tokens are still verified), and the per-IP connection cap does
	// not apply. Headers from any other peer are ignored.
	TrustedProxies string
	// DrainDelay is how long /readyz fails before intake stops at shutdown (--drain-delay, default 0s).
	DrainDelay time.Duration
	// ShutdownTimeout bounds the whole shutdown (--shutdown-timeout, default 15s).
	ShutdownTimeout time.Duration
	// SweepInterval is how often expired sessions are collected (--sweep-interval, default 100ms).
	SweepInterval time.Duration
	// HeartbeatMinGap is the least time between two heartbeats that extend
	// the same session (--heartbeat-min-gap, default 1s; 0 disables). More
	// frequent ones are answered 429 / rate_limited and change nothing.
	HeartbeatMinGap time.Duration
	// SourceRate limits heartbeats per second from one source IP, over both
	// transports (--source-rate, default 2000; 0 disables). Behind a proxy
	// every client shares the proxy's address: raise it or set 0 there.
	SourceRate int
	// SourceBurst is the per-source bucket size (--source-burst, default 4000).
	SourceBurst int
	// SourceTableSlots is the fixed size of the per-source table
	// (--source-table-slots, default 65536 buckets of 8 bytes).
	SourceTableSlots int
	// MaxEventStreams bounds concurrent GET /v1/events streams (--max-event-streams, default 1000).
	MaxEventStreams int
	// MaxEventStreamsPerIP bounds them per client address, so that one
	// address cannot hold them all (--max-event-streams-per-ip, default
	// 100; 0: no per-address limit). Behind --trusted-proxies the address
	// is the client the proxy names.
	MaxEventStreamsPerIP int
	// MaxStateBytes bounds a session's state, a JSON object, serialized
	// compactly (--max-state-bytes, default 1024). A larger one is refused
	// with 400 and changes nothing.
	MaxStateBytes int
	// RoomEventsMax: a room with more members sends one occupancy event
	// per OccupancyInterval instead of per-member events, until it shrinks
	// below 90% of it (--room-events-max, default 1000; 0: never). Single
	// node only; in a cluster every room sends per-member events.
	RoomEventsMax int
	// OccupancyInterval is how often a big room's occupancy event is sent
	// (--occupancy-interval, default 5s).
	OccupancyInterval time.Duration
	// EventHistory is how many events are kept in memory for streams that
	// resume (--event-history, default 100000; in a cluster the Redis
	// Stream keeps them too, see --redis-stream-max-len).
	EventHistory int
	// EventHistoryBytes bounds that history's memory as well
	// (--event-history-bytes, default 64 MiB): about 400 bytes per event
	// without a state, 2.4 KB with a 1 KB state (BENCHMARKS.md, "Event
	// memory"); the oldest events go first.
	EventHistoryBytes int64
	// LeaveDelay holds leave events this long; a join of the same (user,
	// room) within it cancels both (--leave-delay, default 2s; 0 turns the
	// debounce off). Queries are never delayed.
	LeaveDelay time.Duration
	// PprofAddr serves Go's net/http/pprof profiles on a separate listener
	// (--pprof-addr, default empty: off). Bind it to loopback.
	PprofAddr string
	// LastSeenMemoryUsers bounds how many offline users' last-seen times a
	// node without --data-dir keeps in memory (--last-seen-memory-users,
	// default 100000, about 100 bytes each; 0: last_seen is null once a
	// user's sessions end). When full, a new user replaces an arbitrary one.
	LastSeenMemoryUsers int
	// APITokenFile holds bearer tokens for the read endpoints and the event
	// stream, one per line (--api-token-file, empty: reads are open).
	APITokenFile string
	// CORSOrigins lists the browser origins that may call the API, load
	// /ui/presenced.js and open /v1/ws from another origin, comma-separated
	// ("https://app.example.com,http://localhost:3000"), or "*" for any
	// (--cors-origins, default "*": tokens, not cookies, authorize, so a
	// page on any origin can do no more than a client elsewhere; empty: no
	// cross-origin browser access). Answers then carry
	// Access-Control-Allow-Origin, and OPTIONS preflights get 204.
	CORSOrigins string
	// MaxWSConns bounds open WebSocket connections (--max-ws-conns, default
	// 10000, each about 10 KB plus its subscriptions); more get 503.
	MaxWSConns int
	// WSMaxMessageBytes bounds one WebSocket message (--ws-max-message-bytes,
	// default 8192); a larger one closes the socket with 1009.
	WSMaxMessageBytes int
	// WSMessageRate bounds messages per second per WebSocket, with a burst
	// of twice as many (--ws-message-rate, default 20; 0: no limit); a
	// socket over it is closed with 1008.
	WSMessageRate int
	// WSMaxSubscriptions bounds subscriptions per WebSocket
	// (--ws-max-subscriptions, default 16); more are refused with an error.
	WSMaxSubscriptions int
	// WSMaxSessions bounds the sessions one WebSocket heartbeats
	// (--ws-max-sessions, default 64); more are refused with an error.
	WSMaxSessions int
	// WSPingInterval is how often the server pings each WebSocket
	// (--ws-ping-interval, default 30s); a peer silent for two intervals is dropped.
	WSPingInterval time.Duration

	// Map configures the presence table (--shards, --max-rooms-per-user).
	Map shardmap.Config
	// Persist configures the write-ahead log (--fsync, --fsync-interval, --last-seen-retention).
	// Persist.Dir is taken from DataDir.
	Persist persist.Config
	// FsyncMode is the textual --fsync value (interval, always, off).
	FsyncMode string
	// WALRefreshMargin is --wal-refresh-margin: the log writes a refresh of
	// a live session only when the expiry it holds for it is less than this
	// after the heartbeat (persist.Config.RefreshMargin). 0 (the default)
	// derives max(ttl/2, interval*5/4 + fsync-interval), or every refresh
	// with --fsync=always; a value >= --ttl writes every refresh.
	WALRefreshMargin time.Duration
	// Cluster configures the Redis replication of cluster mode. Addrs,
	// MasterName, NodeID and TTL are taken from Redis, RedisMaster, NodeID and TTL.
	Cluster cluster.Config
	// Webhook configures webhook delivery (--webhook-*; empty URL: off).
	Webhook webhook.Config
}

// DefaultConfig returns the embedded defaults: a standalone node on loopback.
func DefaultConfig() Config {
	pc := persist.DefaultConfig()
	return Config{
		HTTPAddr:             "127.0.0.1:7070",
		UDPAddr:              "127.0.0.1:7070",
		DataDir:              "presenced-data",
		TTL:                  150 * time.Second,
		Interval:             60 * time.Second,
		LogLevel:             "info",
		LogFormat:            "text",
		MaxBodyBytes:         1 << 20,
		MaxBatch:             1000,
		MaxStatusUsers:       1000,
		UDPReadBuffer:        4 << 20,
		OverloadDropRatio:    0.01,
		OverloadBackoff:      2,
		UDPMaxPendingAcks:    65536,
		V2MaxClockSkew:       30 * time.Second,
		HTTPReadTimeout:      10 * time.Second,
		HTTPWriteTimeout:     10 * time.Second,
		HTTPIdleTimeout:      60 * time.Second,
		HTTPMaxConns:         10000,
		HTTPMaxConnsPerIP:    1024,
		ShutdownTimeout:      15 * time.Second,
		SweepInterval:        100 * time.Millisecond,
		HeartbeatMinGap:      time.Second,
		SourceRate:           2000,
		SourceBurst:          4000,
		SourceTableSlots:     65536,
		MaxEventStreams:      1000,
		MaxEventStreamsPerIP: 100,
		EventHistory:         100000,
		EventHistoryBytes:    64 << 20,
		RoomEventsMax:        1000,
		OccupancyInterval:    5 * time.Second,
		MaxStateBytes:        1024,
		LeaveDelay:           2 * time.Second,
		LastSeenMemoryUsers:  100000,
		CORSOrigins:          "*",
		MaxWSConns:           10000,
		WSMaxMessageBytes:    8192,
		WSMessageRate:        20,
		WSMaxSubscriptions:   16,
		WSMaxSessions:        64,
		WSPingInterval:       30 * time.Second,
		Map:                  shardmap.DefaultConfig(),
		Persist:              pc,
		FsyncMode:            "interval",
		Cluster:              cluster.DefaultConfig(),
		Webhook:              webhook.DefaultConfig(),
	}
}

// Validate reports the first problem with c, naming the flag.
func (c *Config) Validate() error {
	if _, err := parseCORSOrigins(c.CORSOrigins); err != nil {
		return err
	}
	switch {
	case c.HTTPAddr == "":
		return errors.New("--http-addr must not be empty")
	case c.TTL <= 0:
		return errors.New("--ttl must be positive")
	case c.Interval <= 0:
		return errors.New("--interval must be positive")
	case c.Interval >= c.TTL:
		return fmt.Errorf("--interval (%s) must be shorter than --ttl (%s)", c.Interval, c.TTL)
	case c.MaxBodyBytes < 1024:
		return errors.New("--max-body-bytes must be at least 1024")
	case c.MaxBatch < 1:
		return errors.New("--max-batch must be at least 1")
	case c.MaxStatusUsers < 1:
		return errors.New("--max-status-users must be at least 1")
	case c.RequireV2 && c.SecretFile == "":
		return errors.New("--require-v2 needs --secret-file (v2 datagrams are signed with keys derived from it)")
	case c.V2MaxClockSkew < time.Second:
		return errors.New("--v2-max-clock-skew must be at least 1s")
	case c.UDPMaxPendingAcks < 1:
		return errors.New("--udp-max-pending-acks must be at least 1")
	case c.UDPLoops < 0:
		return errors.New("--udp-loops must not be negative")
	case c.OverloadDropRatio < 0 || c.OverloadDropRatio > 1:
		return errors.New("--overload-drop-ratio must be from 0 to 1")
	case c.OverloadBackoff < 1 || time.Duration(c.OverloadBackoff)*c.Interval >= c.TTL:
		return fmt.Errorf("--overload-backoff must be at least 1 and --interval (%s) times it shorter than --ttl (%s)", c.Interval, c.TTL)
	case c.OverloadCooldown < 0 || c.OverloadMaxHold < 0:
		return errors.New("--overload-cooldown and --overload-max-hold must not be negative")
	case c.WALRefreshMargin < 0:
		return errors.New("--wal-refresh-margin must not be negative")
	case c.WALRefreshMargin > 0 && c.WALRefreshMargin < c.TTL && c.WALRefreshMargin < c.minWALRefreshMargin():
		return fmt.Errorf("--wal-refresh-margin (%s) must be at least --interval + --fsync-interval (%s), or 0 to derive it, or >= --ttl to log every refresh: a smaller margin lets a crash expire a session whose client still heartbeats", c.WALRefreshMargin, c.minWALRefreshMargin())
	case c.SweepInterval <= 0:
		return errors.New("--sweep-interval must be positive")
	case c.HeartbeatMinGap < 0 || c.HeartbeatMinGap >= c.Interval:
		return fmt.Errorf("--heartbeat-min-gap must be from 0 to less than --interval (%s)", c.Interval)
	case c.SourceRate < 0 || c.SourceBurst < 1:
		return errors.New("--source-rate must not be negative and --source-burst must be at least 1")
	case c.SourceTableSlots < 1 || c.SourceTableSlots > 1<<24:
		return errors.New("--source-table-slots must be from 1 to 16777216")
	case c.HTTPMaxConns < 0 || c.HTTPMaxConnsPerIP < 0:
		return errors.New("--http-max-conns and --http-max-conns-per-ip must not be negative")
	case c.LastSeenMemoryUsers < 0:
		return errors.New("--last-seen-memory-users must not be negative")
	case c.MaxEventStreams < 0:
		return errors.New("--max-event-streams must not be negative")
	case c.MaxEventStreamsPerIP < 0:
		return errors.New("--max-event-streams-per-ip must not be negative")
	case c.MaxStateBytes < 2 || c.MaxStateBytes > 65535:
		return errors.New("--max-state-bytes must be from 2 to 65535")
	case c.RoomEventsMax < 0:
		return errors.New("--room-events-max must not be negative")
	case c.OccupancyInterval < 10*time.Millisecond:
		return errors.New("--occupancy-interval must be at least 10ms")
	case c.EventHistory < 1 || c.EventHistory > 10000000:
		return errors.New("--event-history must be from 1 to 10000000")
	case c.EventHistoryBytes < 1<<20:
		return errors.New("--event-history-bytes must be at least 1048576 (1 MiB)")
	case c.LeaveDelay < 0 || c.LeaveDelay > time.Hour:
		return errors.New("--leave-delay must be from 0 to 1h")
	case c.MaxWSConns < 0:
		return errors.New("--max-ws-conns must not be negative")
	case c.WSMaxMessageBytes < 256 || c.WSMaxMessageBytes > 1<<20:
		return errors.New("--ws-max-message-bytes must be from 256 to 1048576")
	case c.WSMessageRate < 0:
		return errors.New("--ws-message-rate must not be negative")
	case c.WSMaxSubscriptions < 1:
		return errors.New("--ws-max-subscriptions must be at least 1")
	case c.WSMaxSessions < 1:
		return errors.New("--ws-max-sessions must be at least 1")
	case c.WSPingInterval < 10*time.Millisecond:
		return errors.New("--ws-ping-interval must be at least 10ms")
	case c.RedisMaster != "" && c.Redis == "":
		return errors.New("--redis-master needs --redis to list the sentinels")
	}
	if _, err := parseProxySet(c.TrustedProxies); err != nil {
		return err
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format must be text or json, not %q", c.LogFormat)
	}
	if err := c.Webhook.Validate(); err != nil {
		return err
	}
	if err := c.Map.Validate(); err != nil {
		return fmt.Errorf("invalid map config: %w", err)
	}
	mode, err := persist.ParseFsyncMode(c.FsyncMode)
	if err != nil {
		return fmt.Errorf("--fsync: %w", err)
	}
	if c.DataDir != "" {
		pc := c.Persist
		pc.Fsync, pc.Dir = mode, c.DataDir
		if err := pc.Validate(); err != nil {
			return fmt.Errorf("invalid persistence config: %w", err)
		}
	}
	return nil
}

// derive fills the fields that follow from others (Persist.Fsync from
// FsyncMode, Persist.Dir from DataDir); Validate only checks, like
// shardmap.Config's. A FsyncMode that does not parse is left for Validate
// to report.
func (c *Config) derive() {
	if mode, err := persist.ParseFsyncMode(c.FsyncMode); err == nil {
		c.Persist.Fsync = mode
	}
	c.Persist.Dir = c.DataDir
	c.Persist.RefreshMargin = c.walRefreshMargin()
	if c.OverloadCooldown == 0 {
		c.OverloadCooldown = 2 * c.Interval
	}
	if c.OverloadMaxHold == 0 {
		c.OverloadMaxHold = 2 * c.TTL
	}
}

// minWALRefreshMargin is the smallest --wal-refresh-margin that keeps a
// crash from expiring a session whose client still heartbeats: the logged
// expiry must outlast the client's next heartbeat and the commit after it.
func (c *Config) minWALRefreshMargin() time.Duration {
	return c.Interval + c.Persist.FsyncInterval
}

// walRefreshMargin is the log's refresh margin (0: every refresh).
func (c *Config) walRefreshMargin() time.Duration {
	m := c.WALRefreshMargin
	if m == 0 {
		if c.Persist.Fsync == persist.FsyncModeAlways {
			return 0
		}
		m = max(c.TTL/2, c.Interval+c.Interval/4+c.Persist.FsyncInterval)
	}
	if m >= c.TTL {
		return 0
	}
	return m
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", s)
	}
	return l, nil
}

// bindFlags registers every serve flag on fs, bound to c.
func bindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "TCP address of the HTTP API")
	fs.StringVar(&c.UDPAddr, "udp-addr", c.UDPAddr, "UDP address for heartbeats (empty disables UDP)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory of the write-ahead log (empty: memory only, nothing survives a restart)")
	fs.DurationVar(&c.TTL, "ttl", c.TTL, "a session expires this long after its last heartbeat")
	fs.DurationVar(&c.Interval, "interval", c.Interval, "heartbeat interval clients are told to use")
	fs.StringVar(&c.Redis, "redis", c.Redis, "Redis address(es) or URL for the cluster view (empty: standalone node)")
	fs.StringVar(&c.RedisMaster, "redis-master", c.RedisMaster, "Sentinel master name (--redis lists the sentinels)")
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "this node's name in the cluster (default: hostname:http-port)")
	fs.StringVar(&c.SecretFile, "secret-file", c.SecretFile, "file of token keys, one '<kid> <secret>' per line (empty: open mode)")
	fs.BoolVar(&c.AllowOpenReload, "allow-open-reload", c.AllowOpenReload, "let a reload (SIGHUP) that removes --secret-file or --api-token-file switch the node to open mode (default: refused)")
	fs.StringVar(&c.ConfigFile, "config", c.ConfigFile, "optional config file of 'flag-name = value' lines")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.IntVar(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "largest HTTP request body in bytes (413 beyond)")
	fs.IntVar(&c.MaxBatch, "max-batch", c.MaxBatch, "most heartbeats in one POST /v1/heartbeats (413 beyond)")
	fs.IntVar(&c.MaxStatusUsers, "max-status-users", c.MaxStatusUsers, "most users in one POST /v1/status (413 beyond)")
	fs.IntVar(&c.UDPLoops, "udp-loops", c.UDPLoops, "UDP event loops, each with its own SO_REUSEPORT socket (0: one per CPU)")
	fs.BoolVar(&c.RequireV2, "require-v2", c.RequireV2, "drop v1 UDP datagrams (unsigned op and ids); needs --secret-file")
	fs.DurationVar(&c.V2MaxClockSkew, "v2-max-clock-skew", c.V2MaxClockSkew, "how far a v2 datagram's timestamp may be from this node's clock")
	fs.IntVar(&c.UDPMaxPendingAcks, "udp-max-pending-acks", c.UDPMaxPendingAcks, "with --fsync=always, most UDP acks waiting for an fsync (more are dropped)")
	fs.IntVar(&c.UDPReadBuffer, "udp-read-buffer", c.UDPReadBuffer, "SO_RCVBUF of each UDP socket in bytes")
	fs.Float64Var(&c.OverloadDropRatio, "overload-drop-ratio", c.OverloadDropRatio, "shed when the kernel drops this share of the offered UDP datagrams in a 1s check (0: never)")
	fs.IntVar(&c.OverloadBackoff, "overload-backoff", c.OverloadBackoff, "while shedding, replies carry interval_ms and ttl_ms times this (1: unchanged)")
	fs.DurationVar(&c.OverloadCooldown, "overload-cooldown", c.OverloadCooldown, "shedding ends after this long without overload (0: 2 x --interval)")
	fs.DurationVar(&c.OverloadMaxHold, "overload-max-hold", c.OverloadMaxHold, "longest run of held timeouts while shedding (0: 2 x --ttl)")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", c.HTTPReadTimeout, "HTTP read timeout")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", c.HTTPWriteTimeout, "HTTP write timeout")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", c.HTTPIdleTimeout, "HTTP keep-alive idle timeout")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", c.HTTPMaxConns, "most concurrent HTTP connections (503 beyond)")
	fs.IntVar(&c.HTTPMaxConnsPerIP, "http-max-conns-per-ip", c.HTTPMaxConnsPerIP, "most concurrent HTTP connections from one address, trusted proxies exempt (429 beyond; 0: no limit)")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "comma-separated IPs/CIDRs of load balancers: their X-Forwarded-For/X-Real-IP is believed and their UDP is not charged per source")
	fs.DurationVar(&c.DrainDelay, "drain-delay", c.DrainDelay, "at shutdown, how long /readyz fails before intake stops")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "upper bound of a graceful shutdown")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", c.SweepInterval, "how often expired sessions are collected")
	fs.DurationVar(&c.HeartbeatMinGap, "heartbeat-min-gap", c.HeartbeatMinGap, "least time between two heartbeats that extend one session (0: no limit)")
	fs.IntVar(&c.SourceRate, "source-rate", c.SourceRate, "heartbeats per second allowed from one source IP (0: no limit)")
	fs.IntVar(&c.SourceBurst, "source-burst", c.SourceBurst, "burst of heartbeats allowed from one source IP")
	fs.IntVar(&c.SourceTableSlots, "source-table-slots", c.SourceTableSlots, "fixed size of the per-source rate table (8 bytes each)")
	fs.IntVar(&c.MaxEventStreams, "max-event-streams", c.MaxEventStreams, "most concurrent GET /v1/events streams")
	fs.IntVar(&c.MaxEventStreamsPerIP, "max-event-streams-per-ip", c.MaxEventStreamsPerIP, "most concurrent GET /v1/events streams per client address (0: no limit)")
	fs.IntVar(&c.MaxStateBytes, "max-state-bytes", c.MaxStateBytes, "largest session state (a JSON object, compact) a heartbeat may set")
	fs.IntVar(&c.RoomEventsMax, "room-events-max", c.RoomEventsMax, "rooms with more members send periodic occupancy events instead of per-member events (0: never)")
	fs.DurationVar(&c.OccupancyInterval, "occupancy-interval", c.OccupancyInterval, "how often a big room's occupancy event is sent")
	fs.IntVar(&c.EventHistory, "event-history", c.EventHistory, "events kept in memory for streams that resume (single node)")
	fs.Int64Var(&c.EventHistoryBytes, "event-history-bytes", c.EventHistoryBytes, "memory bound of the event history in bytes (the oldest events go first)")
	fs.DurationVar(&c.LeaveDelay, "leave-delay", c.LeaveDelay, "hold leave events this long; a rejoin within it cancels both (0: off)")
	fs.IntVar(&c.LastSeenMemoryUsers, "last-seen-memory-users", c.LastSeenMemoryUsers, "without --data-dir, most offline users whose last-seen is kept in memory (0: none)")
	fs.StringVar(&c.PprofAddr, "pprof-addr", c.PprofAddr, "serve net/http/pprof profiles on this address (empty: off; keep it on loopback)")
	fs.StringVar(&c.APITokenFile, "api-token-file", c.APITokenFile, "file of bearer tokens for the read endpoints and the event stream, one per line (empty: open)")
	fs.StringVar(&c.CORSOrigins, "cors-origins", c.CORSOrigins, "browser origins allowed cross-origin (CORS, WebSocket), comma-separated, or * for any (empty: none)")
	fs.IntVar(&c.MaxWSConns, "max-ws-conns", c.MaxWSConns, "most open WebSocket connections (503 beyond)")
	fs.IntVar(&c.WSMaxMessageBytes, "ws-max-message-bytes", c.WSMaxMessageBytes, "largest WebSocket message in bytes (the socket is closed with 1009 beyond)")
	fs.IntVar(&c.WSMessageRate, "ws-message-rate", c.WSMessageRate, "WebSocket messages per second per connection, burst twice that (closed with 1008 beyond; 0: no limit)")
	fs.IntVar(&c.WSMaxSubscriptions, "ws-max-subscriptions", c.WSMaxSubscriptions, "most subscriptions per WebSocket")
	fs.IntVar(&c.WSMaxSessions, "ws-max-sessions", c.WSMaxSessions, "most sessions one WebSocket heartbeats")
	fs.DurationVar(&c.WSPingInterval, "ws-ping-interval", c.WSPingInterval, "how often the server pings each WebSocket; a peer silent for 2 intervals is dropped")
	fs.IntVar(&c.Map.Shards, "shards", c.Map.Shards, "user shards of the presence table (power of two)")
	fs.IntVar(&c.Map.MaxRoomsPerUser, "max-rooms-per-user", c.Map.MaxRoomsPerUser, "most live rooms per user")
	fs.IntVar(&c.Map.MaxConnsPerSession, "max-conns-per-session", c.Map.MaxConnsPerSession, "most connections (tabs, devices) per session (user, room), 1..255")
	fs.StringVar(&c.FsyncMode, "fsync", c.FsyncMode, "write-ahead log sync policy: interval, always or off")
	fs.DurationVar(&c.WALRefreshMargin, "wal-refresh-margin", c.WALRefreshMargin, "log a live session's refresh only when the expiry the log holds is less than this ahead (0: max(ttl/2, interval*5/4+fsync-interval), every refresh with --fsync=always; >= --ttl: every refresh)")
	fs.DurationVar(&c.Persist.FsyncInterval, "fsync-interval", c.Persist.FsyncInterval, "group-commit period with --fsync=interval")
	fs.StringVar(&c.Webhook.URL, "webhook-url", c.Webhook.URL, "POST events in signed batches to this URL (empty: no webhooks)")
	fs.StringVar(&c.Webhook.SecretFile, "webhook-secret-file", c.Webhook.SecretFile, "keyring ('<kid> <secret>' lines) whose first key signs webhook batches")
	fs.IntVar(&c.Webhook.Batch, "webhook-batch", c.Webhook.Batch, "most events in one webhook POST")
	fs.DurationVar(&c.Webhook.MaxAge, "webhook-max-age", c.Webhook.MaxAge, "retry an undelivered webhook batch this long, then dead-letter it")
	fs.DurationVar(&c.Webhook.Timeout, "webhook-timeout", c.Webhook.Timeout, "timeout of one webhook POST")
	fs.DurationVar(&c.Webhook.ClaimAfter, "webhook-claim-after", c.Webhook.ClaimAfter, "cluster: another node takes over webhook events a node held this long without delivering")
	fs.DurationVar(&c.Webhook.MaxBackoff, "webhook-max-backoff", c.Webhook.MaxBackoff, "cap of the exponential backoff between webhook retries")
	fs.IntVar(&c.Webhook.MaxQueue, "webhook-max-queue", c.Webhook.MaxQueue, "single node: most undelivered webhook events queued (beyond: dropped, counted, a reset follows)")
	fs.Int64Var(&c.Webhook.MaxQueueBytes, "webhook-max-queue-bytes", c.Webhook.MaxQueueBytes, "single node without --data-dir: memory bound of the webhook queue in bytes (beyond: dropped, counted, a reset follows)")
	fs.DurationVar(&c.Persist.LastSeenRetention, "last-seen-retention", c.Persist.LastSeenRetention, "how long a user's last-seen is kept after their sessions end")
	fs.DurationVar(&c.Persist.OpenTimeout, "store-open-timeout", c.Persist.OpenTimeout, "how long start-up waits for the write-ahead log to open (a full disk blocks it) before exiting 1")
}

// UsageError is a bad command line, environment or config file (exit status 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// LoadConfig builds the effective config from defaults, the config file,
// PRESENCED_* environment variables and args, in rising precedence: flags
// win over environment, environment over file. getenv is os.Getenv in
// production. Errors are *UsageError.
func LoadConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	// First pass: learn which flags the command line sets, and their values.
	probe := DefaultConfig()
	pfs := flag.NewFlagSet("presenced serve", flag.ContinueOnError)
	pfs.SetOutput(stderr)
	bindFlags(pfs, &probe)
	if err := pfs.Parse(args); err != nil {
		return Config{}, &UsageError{err}
	}
	if pfs.NArg() > 0 {
		return Config{}, &UsageError{fmt.Errorf("unexpected argument %q", pfs.Arg(0))}
	}
	explicit := map[string]string{}
	pfs.Visit(func(f *flag.Flag) { explicit[f.Name] = f.Value.String() })

	cfg := DefaultConfig()
	fs := flag.NewFlagSet("presenced serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &cfg)

	file := getenv(envName("config"))
	if v, ok := explicit["config"]; ok {
		file = v
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return Config{}, &UsageError{fmt.Errorf("cannot read config file: %w", err)}
		}
		kv, err := parseConfigFile(data)
		if err != nil {
			return Config{}, &UsageError{fmt.Errorf("config file %s: %w", file, err)}
		}
		for _, p := range kv {
			if p.k == "config" {
				continue
			}
			if err := fs.Set(p.k, p.v); err != nil {
				return Config{}, &UsageError{fmt.Errorf("config file %s line %d: %s: %w", file, p.line, p.k, err)}
			}
		}
		cfg.ConfigFile = file
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s: %w", envName(f.Name), err)
			}
		}
	})
	if envErr != nil {
		return Config{}, &UsageError{envErr}
	}
	for name, v := range explicit {
		if err := fs.Set(name, v); err != nil {
			return Config{}, &UsageError{fmt.Errorf("--%s: %w", name, err)}
		}
	}
	cfg.derive()
	if err := cfg.Validate(); err != nil {
		return Config{}, &UsageError{err}
	}
	return cfg, nil
}

// envName maps a flag name to its environment variable: http-addr -> PRESENCED_HTTP_ADDR.
func envName(flagName string) string {
	return "PRESENCED_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

type configPair struct {
	k, v string
	line int
}

// parseConfigFile reads `flag-name = value` lines; blank lines and lines
// starting with # are ignored. Values may be double-quoted.
func parseConfigFile(data []byte) ([]configPair, error) {
	var out []configPair
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want 'name = value'", n)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		out = append(out, configPair{k: k, v: v, line: n})
	}
	return out, sc.Err()
}

// PrintConfig writes the effective configuration as a config file, so
// operators can see what runs (`presenced config`).
func PrintConfig(w io.Writer, cfg Config) {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	c := cfg
	bindFlags(fs, &c)
	var lines []string
	fs.VisitAll(func(f *flag.Flag) {
		v := f.Value.String()
		if f.Name == "redis" {
			v = RedactRedis(v)
		}
		lines = append(lines, fmt.Sprintf("%s = %q", f.Name, v))
	})
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// RedactRedis returns a --redis value fit to print or log: the credentials
// of every address (`redis://user:password@host`, also in a comma-separated
// list) are replaced by "xxxxx". The key files are paths, not secrets, so
// --redis is the only flag that can hold one.
func RedactRedis(v string) string {
	parts := strings.Split(v, ",")
	for i, p := range parts {
		at := strings.LastIndexByte(p, '@')
		if at < 0 {
			continue
		}
		start := 0
		if j := strings.Index(p, "://"); j >= 0 && j < at {
			start = j + len("://")
		}
		parts[i] = p[:start] + "xxxxx" + p[at:]
	}
	return strings.Join(parts, ",")
}

// FlagUsage writes the serve flags and their defaults.
func FlagUsage(w io.Writer) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("presenced serve", flag.ContinueOnError)
	fs.SetOutput(w)
	bindFlags(fs, &c)
	fs.PrintDefaults()
}
