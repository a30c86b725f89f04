package shardmap

import (
	"fmt"
	"math/bits"
	"time"
)

// MaxIDLen is the longest user or room id, in bytes.
const MaxIDLen = 128

// maxTTLMs caps a session's lifetime after its last heartbeat (2^31-1 ms, about
// 24.8 days): the record keeps it in 31 bits. Longer ttls are clamped.
const maxTTLMs = 1<<31 - 1

// Config sizes a Map. A zero field means its default.
type Config struct {
	// Shards is the number of user shards: a power of two in 1..65536. Each has
	// its own lock, arena, records and timing wheel; more shards mean less lock
	// contention and WheelSlots*4 bytes more fixed memory each. The default is 64.
	Shards int
	// RoomShards is the number of room-table shards: a power of two in
	// 1..65536. Each has its own lock. A shard can hold 2^(32-log2(RoomShards))-1
	// rooms. The default is 64.
	RoomShards int
	// MaxRoomsPerUser limits the sessions of one user (1..65535). Joins beyond
	// it fail with ErrTooManyRooms. A user's rooms are a linked list walked on
	// every heartbeat, so keep it small. The default is 64.
	MaxRoomsPerUser int
	// MaxConnsPerSession limits the connections of one session (1..255).
	// A heartbeat that would start another fails with ErrTooManyConns. A
	// session's connections are a list scanned on every heartbeat that
	// names one. The default is 16.
	MaxConnsPerSession int
	// Tick is the timing-wheel resolution (at least 1ms). Expire processes
	// whole ticks, so calling it more often than Tick buys nothing. The default
	// is 100ms.
	Tick time.Duration
	// WheelSlots is the number of wheel slots per user shard: a power of two in
	// 16..1<<22. Sessions whose expiry is more than Tick*WheelSlots away wrap
	// the wheel and are looked at (and skipped) once per turn. Costs 4 bytes
	// per slot per shard. The default is 4096 (409.6s at the default Tick).
	WheelSlots int
	// TrackChanges keeps a per-shard change log for Drain (persistence and
	// replication). Off by default; costs one 40-byte log entry per changed
	// session between drains, plus the ids of ended sessions.
	TrackChanges bool
}

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{
		Shards:             64,
		RoomShards:         64,
		MaxRoomsPerUser:    64,
		MaxConnsPerSession: 16,
		Tick:               100 * time.Millisecond,
		WheelSlots:         4096,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Shards == 0 {
		c.Shards = d.Shards
	}
	if c.RoomShards == 0 {
		c.RoomShards = d.RoomShards
	}
	if c.MaxRoomsPerUser == 0 {
		c.MaxRoomsPerUser = d.MaxRoomsPerUser
	}
	if c.MaxConnsPerSession == 0 {
		c.MaxConnsPerSession = d.MaxConnsPerSession
	}
	if c.Tick == 0 {
		c.Tick = d.Tick
	}
	if c.WheelSlots == 0 {
		c.WheelSlots = d.WheelSlots
	}
	return c
}

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// Validate reports the first field that is out of range. Zero fields are
// valid: they mean the default.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case !isPow2(c.Shards) || c.Shards > 1<<16:
		return fmt.Errorf("cannot use config: Shards must be a power of two in 1..65536, got %d: %w", c.Shards, ErrBadConfig)
	case !isPow2(c.RoomShards) || c.RoomShards > 1<<16:
		return fmt.Errorf("cannot use config: RoomShards must be a power of two in 1..65536, got %d: %w", c.RoomShards, ErrBadConfig)
	case c.MaxRoomsPerUser < 1 || c.MaxRoomsPerUser > 65535:
		return fmt.Errorf("cannot use config: MaxRoomsPerUser must be in 1..65535, got %d: %w", c.MaxRoomsPerUser, ErrBadConfig)
	case c.MaxConnsPerSession < 1 || c.MaxConnsPerSession > 255:
		return fmt.Errorf("cannot use config: MaxConnsPerSession must be in 1..255, got %d: %w", c.MaxConnsPerSession, ErrBadConfig)
	case c.Tick < time.Millisecond:
		return fmt.Errorf("cannot use config: Tick must be at least 1ms, got %v: %w", c.Tick, ErrBadConfig)
	case !isPow2(c.WheelSlots) || c.WheelSlots < 16 || c.WheelSlots > 1<<22:
		return fmt.Errorf("cannot use config: WheelSlots must be a power of two in 16..4194304, got %d: %w", c.WheelSlots, ErrBadConfig)
	}
	return nil
}

func log2(n int) uint { return uint(bits.TrailingZeros(uint(n))) }
