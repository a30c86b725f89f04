package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config configures a cluster node. Every node of one cluster must agree on
// TTL and Prefix; NodeID must differ between nodes.
type Config struct {
	// Addrs is the --redis value: one host:port (a single Redis), several
	// comma-separated (Redis Cluster, or sentinels with MasterName), or a
	// redis:// or rediss:// URL. Required.
	Addrs string
	// MasterName is the Sentinel master name (--redis-master); empty: no Sentinel.
	MasterName string
	// NodeID names this node in the event stream and in the re-assert
	// markers (--node-id). Required.
	NodeID string
	// Prefix starts every key (default "pd").
	Prefix string
	// TTL is the session lifetime after a heartbeat (the server's --ttl).
	TTL time.Duration
	// FlushInterval is how often the writer sends what it collected (default
	// 50ms). Shorter lowers replication lag and shrinks pipelines.
	FlushInterval time.Duration
	// RefreshMargin is how long before a session's Redis-side expiry a
	// deferred refresh is written (default 10s, at most TTL/4). It must
	// exceed the clock skew between nodes plus a Redis round trip; a larger
	// margin writes more often (one write per TTL-RefreshMargin per session).
	RefreshMargin time.Duration
	// ReapInterval is how often this node looks for expired sessions in
	// every bucket (default 500ms; one script call per bucket per interval).
	ReapInterval time.Duration
	// HealthInterval is how often Redis is pinged and the re-assert markers
	// checked (default 1s). Convergence after a Redis restart takes up to
	// HealthInterval plus the re-assert itself.
	HealthInterval time.Duration
	// StreamMaxLen caps the event stream, approximately (XADD MAXLEN ~,
	// default 100,000 entries, about 100 bytes each). A backend that falls
	// further behind than that loses the oldest events.
	StreamMaxLen int64
	// LeaveDelay holds leave events in Redis this long; a join of the same
	// (user, room) through any node within it cancels both (the server's
	// --leave-delay; 0 turns the debounce off).
	LeaveDelay time.Duration
	// LastSeenRetention keeps an offline user's last-seen time in Redis
	// (default 24h, one small string per user).
	LastSeenRetention time.Duration
	// MaxQueue bounds the changes waiting for the writer (default 1<<20);
	// beyond it changes are dropped, counted, and a re-assert is scheduled.
	MaxQueue int
	// PipelineSize is the largest pipeline sent at once (default 4096 commands).
	PipelineSize int
	// QueryTimeout bounds a cluster-wide query; past it the server answers
	// from this node with "partial": true (default 250ms).
	QueryTimeout time.Duration
	// Logger receives the node's logs (default slog.Default()).
	Logger *slog.Logger
}

// DefaultConfig returns the defaults; Addrs and NodeID still need setting.
func DefaultConfig() Config {
	return Config{
		Prefix:            "pd",
		TTL:               150 * time.Second,
		FlushInterval:     50 * time.Millisecond,
		RefreshMargin:     10 * time.Second,
		ReapInterval:      500 * time.Millisecond,
		HealthInterval:    time.Second,
		StreamMaxLen:      100_000,
		LastSeenRetention: 24 * time.Hour,
		MaxQueue:          1 << 20,
		PipelineSize:      4096,
		QueryTimeout:      250 * time.Millisecond,
	}
}

// Validate reports the first problem, naming the flag where there is one.
func (c *Config) Validate() error {
	switch {
	case c.Addrs == "":
		return errors.New("--redis must not be empty in cluster mode")
	case c.NodeID == "":
		return errors.New("--node-id must not be empty")
	case c.Prefix == "" || strings.ContainsAny(c.Prefix, "{}"):
		return errors.New("cluster key prefix must be non-empty and hold no braces")
	case c.TTL <= 0:
		return errors.New("--ttl must be positive")
	case c.FlushInterval <= 0, c.ReapInterval <= 0, c.HealthInterval <= 0, c.QueryTimeout <= 0:
		return errors.New("cluster intervals must be positive")
	case c.RefreshMargin <= 0:
		return errors.New("cluster refresh margin must be positive")
	case c.MaxQueue < 1024 || c.PipelineSize < 64:
		return errors.New("cluster queue must hold 1024 changes and pipelines 64 commands")
	case c.RefreshMargin > c.TTL/4:
		return fmt.Errorf("cluster refresh margin %s must be at most a quarter of the TTL (%s)", c.RefreshMargin, c.TTL)
	}
	_, err := c.options()
	return err
}

// derive caps RefreshMargin at a quarter of the TTL (the default margin is
// for the default TTL); Validate only checks.
func (c *Config) derive() {
	if c.TTL > 0 && c.RefreshMargin > c.TTL/4 {
		c.RefreshMargin = c.TTL / 4
	}
}

// options turns Addrs and MasterName into go-redis universal options.
func (c *Config) options() (*redis.UniversalOptions, error) {
	o := &redis.UniversalOptions{
		MasterName:  c.MasterName,
		DialTimeout: 2 * time.Second,
		// A reply read waits at most 2 s: a read with no deadline of its
		// own (go-redis's background work on a connection) must not hold a
		// hung master's slots for long; every reply here takes
		// milliseconds, and each pipeline of a write round has its own
		// writeTimeout. Writing a pipeline may wait up to a round for a
		// Redis starved of CPU. A dead or hung Redis is found by the health
		// check (deadline HealthInterval + 1 s), which then cancels the
		// rounds in flight; queries carry their own 250 ms deadline; the
		// slot map reload is bounded by slotsTimeout.
		ReadTimeout:  2 * time.Second,
		WriteTimeout: writeTimeout,
		// No transparent retries: a retried pipeline would run its scripts
		// twice; the node recovers from a failed round trip itself (it
		// re-asserts its sessions). Redis Cluster redirects (MOVED, ASK)
		// are followed, up to 3 (MaxRedirects), because a redirected command
		// did not run; writes are marked so go-redis never resends them
		// after a network error (see scripts.go).
		MaxRetries: -1,
		// One dial attempt: a dead master refuses at once, and go-redis's
		// own 5 attempts 100 ms apart only delay the fault (and the slot
		// map reload it triggers).
		DialerRetries: 1,
		// Every new connection, to any master old or newly promoted, loads
		// the scripts first. A failure (e.g. on a sentinel's own
		// connection, which has no SCRIPT) is left to the NOSCRIPT path.
		OnConnect: func(ctx context.Context, cn *redis.Conn) error {
			_ = loadScriptsOn(ctx, cn)
			return nil
		},
		// Queries carry a short deadline (QueryTimeout): let it bound the
		// socket reads too, so a black-holed Redis answers partial in time.
		ContextTimeoutEnabled: true,
	}
	a := strings.TrimSpace(c.Addrs)
	if strings.HasPrefix(a, "redis://") || strings.HasPrefix(a, "rediss://") {
		u, err := redis.ParseURL(a)
		if err != nil {
			return nil, fmt.Errorf("--redis: cannot parse URL: %w", err)
		}
		o.Addrs = []string{u.Addr}
		o.Username, o.Password, o.DB = u.Username, u.Password, u.DB
		if u.TLSConfig != nil {
			o.TLSConfig = u.TLSConfig.Clone()
		} else if strings.HasPrefix(a, "rediss://") {
			o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		return o, nil
	}
	for _, p := range strings.Split(a, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.Contains(p, ":") {
			return nil, fmt.Errorf("--redis: %q is not host:port", p)
		}
		o.Addrs = append(o.Addrs, p)
	}
	if len(o.Addrs) == 0 {
		return nil, errors.New("--redis lists no address")
	}
	return o, nil
}

// clusterStateReload is how often a Redis Cluster client re-reads the slot
// map even when nothing failed.
const clusterStateReload = 5 * time.Second

// newClient builds the go-redis client: Sentinel with MasterName, Redis
// Cluster with several addresses, a single Redis otherwise.
// With a Redis Cluster it also returns the slot map source, to close with
// the client.
func (c *Config) newClient() (redis.UniversalClient, *slotSource, error) {
	o, err := c.options()
	if err != nil {
		return nil, nil, err
	}
	if o.MasterName == "" && len(o.Addrs) > 1 {
		co := o.Cluster()
		// The slot map is reloaded after every failed round trip
		// (Node.markDown); this bounds how stale it gets without errors.
		co.ClusterStateReloadInterval = clusterStateReload
		src := newSlotSource(o)
		co.ClusterSlots = src.slots
		return redis.NewClusterClient(co), src, nil
	}
	return redis.NewUniversalClient(o), nil, nil
}
