package persist

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FsyncMode is the sync policy of the committer; see doc.go for the promise
// each one makes.
type FsyncMode uint8

const (
	// FsyncModeInterval commits with an fsync every Config.FsyncInterval.
	FsyncModeInterval FsyncMode = iota
	// FsyncModeAlways also lets callers wait, with WaitDurable, for a synced
	// cycle that started after they called.
	FsyncModeAlways
	// FsyncModeOff commits without fsync: safe against a process crash, not
	// against power loss.
	FsyncModeOff
)

// String returns the name ParseFsyncMode accepts.
func (m FsyncMode) String() string {
	switch m {
	case FsyncModeInterval:
		return "interval"
	case FsyncModeAlways:
		return "always"
	case FsyncModeOff:
		return "off"
	}
	return fmt.Sprintf("FsyncMode(%d)", uint8(m))
}

// ParseFsyncMode parses "interval", "always" or "off".
func ParseFsyncMode(s string) (FsyncMode, error) {
	switch s {
	case "interval":
		return FsyncModeInterval, nil
	case "always":
		return FsyncModeAlways, nil
	case "off":
		return FsyncModeOff, nil
	}
	return 0, fmt.Errorf("cannot parse fsync mode %q: want interval, always or off", s)
}

// MarshalText implements encoding.TextMarshaler (config files, printing the
// effective config).
func (m FsyncMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *FsyncMode) UnmarshalText(b []byte) error {
	v, err := ParseFsyncMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Config configures a Store. Start from DefaultConfig.
type Config struct {
	// Dir is the database directory. Required; created if missing.
	Dir string

	// FS is the filesystem Pebble uses. nil means the real disk. Tests pass
	// vfs.NewMem(), vfs.NewCrashableMem() or an errorfs wrapper.
	FS vfs.FS

	// Fsync is the sync policy. The default is FsyncModeInterval. Always
	// costs one fsync per WaitDurable cycle (shared by concurrent waiters);
	// off costs none but gives up power-loss durability.
	Fsync FsyncMode

	// FsyncInterval is the committer's period (a cycle, which commits what
	// Add handed over, every half of it), in every mode. The default is 100ms. It bounds what a crash loses in
	// interval mode; shorter costs more fsyncs (one per interval).
	FsyncInterval time.Duration

	// RefreshMargin makes the log skip refreshes: a change that only
	// refreshes a live session (same state, see shardmap.Change.Logged) is
	// written only when the expiry the log holds for it is less than
	// RefreshMargin after the session's last heartbeat. A client that
	// heartbeats every I then costs one record per about TTL-RefreshMargin
	// instead of one per I, and after a crash its session is restored with
	// an expiry at least RefreshMargin-I-FsyncInterval after the crash and a
	// last-seen up to TTL-RefreshMargin+FsyncInterval old (doc.go,
	// Durability). Zero (the default) writes every refresh.
	RefreshMargin time.Duration

	// LastSeenRetention is how long a user's last-seen time is kept after
	// their last session ended. The default is 30 days. The store holds one
	// ~(user+20)-byte record per user seen within it.
	LastSeenRetention time.Duration

	// SweepInterval is how often expired last-seen records are deleted. The
	// default is 1h; the first sweep runs min(SweepInterval, 1m) after Start.
	// Each sweep reads every retained last-seen record once.
	SweepInterval time.Duration

	// MaxPendingBytes bounds the backlog of encoded changes kept in memory
	// while commits fail. Past it, new changes are dropped and counted in
	// Stats.DroppedChanges. The default is 64 MiB.
	MaxPendingBytes int64

	// OpenTimeout bounds Open: Pebble replays its log by writing it out,
	// and on a full disk retries that forever. Past the timeout Open fails
	// with the last storage error and the free space (the server then exits
	// 1). The default is 1m; a log of a million sessions replays in ~1-2s.
	OpenTimeout time.Duration

	// Logger receives disk errors, reopen attempts and Pebble's own log.
	// nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults; Dir is left empty.
func DefaultConfig() Config {
	return Config{
		Fsync:             FsyncModeInterval,
		FsyncInterval:     100 * time.Millisecond,
		LastSeenRetention: 30 * 24 * time.Hour,
		SweepInterval:     time.Hour,
		MaxPendingBytes:   64 << 20,
		OpenTimeout:       time.Minute,
	}
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return fmt.Errorf("cannot validate persist config: Dir is empty")
	case c.Fsync > FsyncModeOff:
		return fmt.Errorf("cannot validate persist config: unknown Fsync %d", c.Fsync)
	case c.RefreshMargin < 0:
		return fmt.Errorf("cannot validate persist config: RefreshMargin %v must be >= 0", c.RefreshMargin)
	case c.FsyncInterval <= 0:
		return fmt.Errorf("cannot validate persist config: FsyncInterval %v must be > 0", c.FsyncInterval)
	case c.LastSeenRetention <= 0:
		return fmt.Errorf("cannot validate persist config: LastSeenRetention %v must be > 0", c.LastSeenRetention)
	case c.SweepInterval <= 0:
		return fmt.Errorf("cannot validate persist config: SweepInterval %v must be > 0", c.SweepInterval)
	case c.OpenTimeout <= 0:
		return fmt.Errorf("cannot validate persist config: OpenTimeout %v must be > 0", c.OpenTimeout)
	case c.MaxPendingBytes < 1<<10:
		return fmt.Errorf("cannot validate persist config: MaxPendingBytes %d must be >= 1024", c.MaxPendingBytes)
	}
	return nil
}
