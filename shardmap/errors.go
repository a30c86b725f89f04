package shardmap

import "errors"

// ErrBadID is returned when a user id is empty or longer than MaxIDLen bytes,
// or a room id is longer than MaxIDLen bytes. The caller (the server) does the
// full validation (UTF-8, no control characters); the Map only refuses ids it
// cannot store.
var ErrBadID = errors.New("bad id: user must be 1..128 bytes, room 0..128 bytes")

// ErrTooManyRooms is returned by Touch and Restore when the user already has
// Config.MaxRoomsPerUser sessions and the heartbeat would start another one.
var ErrTooManyRooms = errors.New("too many rooms for this user")

// ErrFull is returned when a shard cannot index one more user, session or room
// (more than 2^31 sessions or 2^24-1 users in one user shard, or more than
// 2^24-1 rooms, or more than a packed room reference can name, in one
// room shard than fit in a packed room reference). It means the Map is far
// beyond its design size; raise Shards or RoomShards.
var ErrFull = errors.New("presence table full")

// ErrBadConfig is wrapped by Config.Validate errors.
var ErrBadConfig = errors.New("bad shardmap config")

// ErrRateLimited is returned by Touch when the session was refreshed less
// than the minimum refresh gap ago (Map.SetMinRefreshGap). Nothing changed.
var ErrRateLimited = errors.New("session refreshed too often")

// ErrTooManyConns is returned by TouchConn when the session already has
// Config.MaxConnsPerSession connections and the heartbeat would start another.
var ErrTooManyConns = errors.New("too many connections for this session")

// ErrBadConn is returned when a connection id is longer than MaxConnIDLen.
var ErrBadConn = errors.New("bad connection id: at most 64 bytes")
