package cluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/shardmap"
)

// The queries answer for the whole cluster from Redis, and fail at once
// with ErrPartial while the node is not whole (health.go). They block for one
// or two pipelined round trips; callers bound them with ctx and fall back
// to this node's own state on error. None merges local state: the server
// does, because only it knows what this node has not written yet.

// ErrBadCursor is a members cursor this package did not produce.
var ErrBadCursor = errors.New("cursor must be a next_cursor value from an earlier page")

// UserStatus is one user as Redis knows them.
type UserStatus struct {
	Online bool
	// Rooms are the user's live sessions, sorted by room.
	Rooms []shardmap.RoomSession
	// LastSeen is the latest heartbeat Redis knows (unix ms, 0: none). For
	// sessions held by other nodes it may lag the last heartbeat by up to
	// TTL - RefreshMargin (refreshes are coalesced).
	LastSeen int64
}

// Users reads the status of each user, in order.
func (n *Node) Users(ctx context.Context, users []string, now int64) ([]UserStatus, error) {
	if !n.Up() {
		return nil, ErrPartial
	}
	p := n.c.Pipeline()
	hs := make([]*redis.MapStringStringCmd, len(users))
	ls := make([]*redis.StringCmd, len(users))
	for i, u := range users {
		hs[i] = p.HGetAll(ctx, n.k.user(u))
		ls[i] = p.Get(ctx, n.k.seen(u))
	}
	if err := n.exec(ctx, p); err != nil {
		return nil, err
	}
	out := make([]UserStatus, len(users))
	for i := range users {
		st := &out[i]
		if v, err := ls[i].Int64(); err == nil {
			st.LastSeen = v
		}
		for room, v := range hs[i].Val() {
			exp, seen, state, ok := splitValueState(v)
			if !ok || exp <= now {
				continue
			}
			st.Online = true
			if room != "" || state != "" {
				st.Rooms = append(st.Rooms, shardmap.RoomSession{Room: room, LastSeen: seen, Expiry: exp, State: stateBytes(state)})
			}
			st.LastSeen = max(st.LastSeen, seen)
		}
		sort.Slice(st.Rooms, func(a, b int) bool { return st.Rooms[a].Room < st.Rooms[b].Room })
	}
	return out, nil
}

// RoomOnline reads the number of distinct users in room.
func (n *Node) RoomOnline(ctx context.Context, room string) (int, error) {
	if !n.Up() {
		return 0, ErrPartial
	}
	v, err := n.c.ZScore(ctx, n.k.top(roomBucket(room)), room).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return int(v), nil
}

// EncodeCursor turns the last user of a page into an opaque cursor; the
// next page starts after it in byte order.
func EncodeCursor(user string) string {
	return "c" + base64.RawURLEncoding.EncodeToString([]byte(user))
}

// DecodeCursor reverses EncodeCursor ("" is the start).
func DecodeCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	if c[0] != 'c' {
		return "", ErrBadCursor
	}
	b, err := base64.RawURLEncoding.DecodeString(c[1:])
	if err != nil || len(b) == 0 {
		return "", ErrBadCursor
	}
	return string(b), nil
}

// Members reads up to limit members of room after the user after (""
// from the start), in byte order of user ids, and the user to continue
// after ("" at the end). The member set is ordered by id and the walk
// continues strictly after the last id returned, so a member present for
// the whole walk is returned exactly once. A page may hold fewer than limit
// members when some have just ended.
func (n *Node) Members(ctx context.Context, room, after string, limit int, now int64) ([]shardmap.Member, string, error) {
	if !n.Up() {
		return nil, "", ErrPartial
	}
	lo := "-"
	if after != "" {
		lo = "(" + after
	}
	users, err := n.c.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: n.k.members(room), Start: lo, Stop: "+", ByLex: true, Offset: 0, Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(users) == limit {
		next = users[len(users)-1]
	}
	if len(users) == 0 {
		return nil, next, nil
	}
	p := n.c.Pipeline()
	vals := make([]*redis.StringCmd, len(users))
	for i, u := range users {
		vals[i] = p.HGet(ctx, n.k.user(u), room)
	}
	if err := n.exec(ctx, p); err != nil {
		return nil, "", err
	}
	out := make([]shardmap.Member, 0, len(users))
	for i, u := range users {
		v, err := vals[i].Result()
		if err != nil {
			continue
		}
		exp, seen, state, ok := splitValueState(v)
		if !ok || exp <= now {
			continue
		}
		out = append(out, shardmap.Member{User: u, LastSeen: seen, State: stateBytes(state)})
	}
	return out, next, nil
}

// TopRooms reads the n rooms with the most users, most first, ties by name.
func (n *Node) TopRooms(ctx context.Context, top int) ([]shardmap.RoomCount, error) {
	if !n.Up() {
		return nil, ErrPartial
	}
	p := n.c.Pipeline()
	cmds := make([]*redis.ZSliceCmd, Buckets)
	for b := range Buckets {
		cmds[b] = p.ZRevRangeWithScores(ctx, n.k.top(b), 0, int64(top-1))
	}
	if err := n.exec(ctx, p); err != nil {
		return nil, err
	}
	var out []shardmap.RoomCount
	for _, c := range cmds {
		for _, z := range c.Val() {
			if z.Score < 1 {
				continue
			}
			out = append(out, shardmap.RoomCount{Room: fmt.Sprint(z.Member), Online: int(z.Score)})
		}
	}
	SortRooms(out)
	if len(out) > top {
		out = out[:top]
	}
	return out, nil
}

// SortRooms orders rooms most online first, ties by name.
func SortRooms(rs []shardmap.RoomCount) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Online != rs[j].Online {
			return rs[i].Online > rs[j].Online
		}
		return rs[i].Room < rs[j].Room
	})
}

// ClusterStats reads the global counts, summed over the buckets.
func (n *Node) ClusterStats(ctx context.Context) (shardmap.Stats, error) {
	if !n.Up() {
		return shardmap.Stats{}, ErrPartial
	}
	p := n.c.Pipeline()
	cs := make([]*redis.SliceCmd, Buckets)
	rs := make([]*redis.IntCmd, Buckets)
	for b := range Buckets {
		cs[b] = p.HMGet(ctx, n.k.counts(b), "s", "u")
		rs[b] = p.ZCard(ctx, n.k.top(b))
	}
	if err := n.exec(ctx, p); err != nil {
		return shardmap.Stats{}, err
	}
	var st shardmap.Stats
	for b := range Buckets {
		v := cs[b].Val()
		st.Sessions += atoi(v, 0)
		st.OnlineUsers += atoi(v, 1)
		st.Rooms += rs[b].Val()
	}
	return st, nil
}

func atoi(v []any, i int) int64 {
	if i >= len(v) {
		return 0
	}
	s, _ := v[i].(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return max(n, 0)
}
