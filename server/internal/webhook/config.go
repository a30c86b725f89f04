package webhook

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// Config configures webhook delivery. The server fills it from its flags.
type Config struct {
	// URL receives the POSTed batches (--webhook-url, empty: no webhooks).
	URL string
	// SecretFile is a keyring in the --secret-file format; its first key
	// signs (--webhook-secret-file, empty: batches are not signed).
	SecretFile string
	// Batch is the most events in one POST (--webhook-batch, default 100).
	Batch int
	// MaxAge is how long a batch is retried before it is dead-lettered
	// (--webhook-max-age, default 24h).
	MaxAge time.Duration
	// Timeout bounds one POST, connect to answer (--webhook-timeout, default 10s).
	Timeout time.Duration
	// ClaimAfter is how long a cluster node may hold undelivered events
	// (or the delivery lease) without progress before another node takes
	// them over (--webhook-claim-after, default 30s). Cost: a dead node's
	// events are this late.
	ClaimAfter time.Duration
	// MaxBackoff caps the exponential backoff between retries
	// (--webhook-max-backoff, default 30s).
	MaxBackoff time.Duration
	// MaxQueue bounds the single-node delivery queue, in events
	// (--webhook-max-queue, default 1000000: about 200 MB on disk or in
	// memory). Beyond it new events are dropped, counted, and replaced by
	// one reset event.
	MaxQueue int
	// MaxQueueBytes bounds the in-memory delivery queue (single node
	// without a data directory) in bytes as well (--webhook-max-queue-bytes,
	// default 256 MiB): each event costs its JSON and about 64 bytes
	// (BENCHMARKS.md, "Event memory"). Beyond it new events are dropped,
	// counted, and replaced by one reset event, as past MaxQueue.
	MaxQueueBytes int64
	// Linger is how long a batch that is not full waits for more events
	// (default 200ms; README "Webhooks" promises at most 1 s).
	Linger time.Duration

	// Logger, when set, receives the deliverer's logs.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults named on each field.
func DefaultConfig() Config {
	return Config{
		Batch:         100,
		MaxAge:        24 * time.Hour,
		Timeout:       10 * time.Second,
		ClaimAfter:    30 * time.Second,
		MaxBackoff:    30 * time.Second,
		MaxQueue:      1_000_000,
		MaxQueueBytes: 256 << 20,
		Linger:        200 * time.Millisecond,
	}
}

// Validate reports the first problem, naming the flag. An empty URL (no
// webhooks) is valid whatever the rest says.
func (c *Config) Validate() error {
	if c.URL == "" {
		return nil
	}
	u, err := url.Parse(c.URL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("--webhook-url must be an http or https URL, not %q", c.URL)
	case c.Batch < 1 || c.Batch > 10000:
		return errors.New("--webhook-batch must be from 1 to 10000")
	case c.MaxAge <= 0:
		return errors.New("--webhook-max-age must be positive")
	case c.Timeout <= 0:
		return errors.New("--webhook-timeout must be positive")
	case c.ClaimAfter < 100*time.Millisecond:
		return errors.New("--webhook-claim-after must be at least 100ms")
	case c.MaxBackoff < 10*time.Millisecond:
		return errors.New("--webhook-max-backoff must be at least 10ms")
	case c.MaxQueue < 1:
		return errors.New("--webhook-max-queue must be at least 1")
	case c.MaxQueueBytes < 1:
		return errors.New("--webhook-max-queue-bytes must be at least 1")
	case c.Linger < 0 || c.Linger > time.Second:
		return errors.New("webhook linger must be from 0 to 1s")
	}
	return nil
}
