package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/jsonbody"
	"github.com/presenced/presenced/server/wire"
	"github.com/presenced/presenced/shardmap"
)

// The read side of the API. Each query first computes its answer: from this
// node's table on a standalone node; in cluster mode from Redis merged with
// this node's own table, or from this node alone (partial) when Redis does
// not answer within the query timeout. One renderer per answer writes the
// JSON for both modes.

func (s *Server) queryCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.cfg.Cluster.QueryTimeout)
}

// endPartial closes a JSON object, marking it partial when the cluster did
// not answer.
func (s *Server) endPartial(b []byte, partial bool) []byte {
	if partial {
		s.partial.Add(1)
		b = append(b, `,"partial":true`...)
	}
	return append(b, '}')
}

// userStatus is one user's answer.
type userStatus struct {
	user     string
	online   bool
	rooms    []shardmap.RoomSession
	lastSeen int64
}

// userStatuses answers for users. Offline users' last-seen comes from the
// write-ahead log when there is one.
func (s *Server) userStatuses(users []string) ([]userStatus, bool) {
	var (
		remote  []cluster.UserStatus
		partial bool
	)
	if s.cl != nil {
		qctx, cancel := s.queryCtx()
		var err error
		remote, err = s.cl.Users(qctx, users, time.Now().UnixMilli())
		cancel()
		partial = err != nil
	}
	out := make([]userStatus, len(users))
	for i, u := range users {
		st := &out[i]
		st.user = u
		st.rooms, st.lastSeen, st.online = s.m.User([]byte(u), nil)
		if remote != nil && !partial {
			c := &remote[i]
			st.online = st.online || c.Online
			st.lastSeen = max(st.lastSeen, c.LastSeen)
			st.rooms = mergeRooms(st.rooms, c.Rooms)
		}
		if !st.online && s.departed != nil {
			if ms, ok := s.departed.get(u, time.Now().UnixMilli()); ok {
				st.lastSeen = max(st.lastSeen, ms)
			}
		}
		if !st.online && s.store != nil {
			if ms, ok, err := s.store.LastSeen([]byte(u)); err == nil && ok {
				st.lastSeen = max(st.lastSeen, ms)
			}
		}
	}
	return out, partial
}

// mergeRooms adds the cluster's rooms missing from local, sorted by room.
func mergeRooms(local, remote []shardmap.RoomSession) []shardmap.RoomSession {
	for _, r := range remote {
		found := false
		for i := range local {
			if local[i].Room == r.Room {
				found = true
				break
			}
		}
		if !found {
			local = append(local, r)
		}
	}
	sort.Slice(local, func(i, j int) bool { return local[i].Room < local[j].Room })
	return local
}

// appendUserStatus appends one user object, still open for endPartial.
func appendUserStatus(b []byte, st *userStatus) []byte {
	b = append(b, `{"user":`...)
	b = appendJSONString(b, st.user)
	b = append(b, `,"online":`...)
	b = strconv.AppendBool(b, st.online)
	b = append(b, `,"rooms":[`...)
	first := true
	for _, r := range st.rooms {
		if r.Room == "" {
			continue // the room-less session, listed for its state
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, r.Room)
	}
	b = append(b, `],"sessions":[`...)
	for i, r := range st.rooms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"room":`...)
		b = appendJSONString(b, r.Room)
		b = append(b, `,"state":`...)
		b = appendState(b, r.State)
		b = append(b, `,"last_seen":`...)
		b = appendTime(b, r.LastSeen)
		b = appendConns(b, r.Conns, r.State, r.LastSeen)
		b = append(b, '}')
	}
	b = append(b, `],"last_seen":`...)
	return appendTime(b, st.lastSeen)
}

// appendConns appends a session's "connections" member: each connection's
// id, state and last heartbeat. A session known without its connections (a
// cluster answer from Redis) is listed as its default connection.
func appendConns(b []byte, conns []shardmap.Conn, state []byte, lastSeen int64) []byte {
	b = append(b, `,"connections":[`...)
	if len(conns) == 0 {
		conns = []shardmap.Conn{{ID: shardmap.DefaultConn, State: state, LastSeen: lastSeen}}
	}
	for i := range conns {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"conn":`...)
		b = appendJSONString(b, conns[i].ID)
		b = append(b, `,"state":`...)
		b = appendState(b, conns[i].State)
		b = append(b, `,"last_seen":`...)
		b = appendTime(b, conns[i].LastSeen)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendState appends a session state (a compact JSON object) or null,
// valid UTF-8 whatever was stored (events.ValidUTF8).
func appendState(b, state []byte) []byte {
	if state == nil {
		return append(b, "null"...)
	}
	return append(b, events.ValidUTF8(state)...)
}

func (s *Server) hUser(ctx *fasthttp.RequestCtx, raw []byte) {
	user, ok := pathID(ctx, raw, "user")
	if !ok {
		return
	}
	sts, partial := s.userStatuses([]string{string(user)})
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(appendUserStatus(nil, &sts[0]), partial))
}

func (s *Server) hStatus(ctx *fasthttp.RequestCtx) {
	var req struct {
		Users []string `json:"users"`
	}
	// encoding/json would read invalid UTF-8 and lone surrogate escapes as
	// U+FFFD, so several bodies would name one user: refuse them instead.
	body := ctx.PostBody()
	if err := json.Unmarshal(body, &req); err != nil || !utf8.Valid(body) || jsonbody.HasLoneSurrogate(body) {
		jsonError(ctx, fasthttp.StatusBadRequest, `body must be JSON {"users":[...]} of strings`)
		return
	}
	if req.Users == nil {
		jsonError(ctx, fasthttp.StatusBadRequest, `"users" must be an array of user ids`)
		return
	}
	if len(req.Users) > s.cfg.MaxStatusUsers {
		jsonError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("users exceeds max-status-users (%d)", s.cfg.MaxStatusUsers))
		return
	}
	for i, u := range req.Users {
		if !wire.ValidID([]byte(u), false) {
			jsonError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("users[%d] must be 1 to 128 bytes of UTF-8 without control characters", i))
			return
		}
	}
	sts, partial := s.userStatuses(req.Users)
	b := []byte(`{"users":[`)
	for i := range sts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(appendUserStatus(b, &sts[i]), '}')
	}
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(append(b, ']'), partial))
}

func (s *Server) hRoom(ctx *fasthttp.RequestCtx, raw []byte) {
	room, ok := pathID(ctx, raw, "room")
	if !ok {
		return
	}
	n, partial := s.m.RoomOnline(room), false
	if s.cl != nil {
		qctx, cancel := s.queryCtx()
		c, err := s.cl.RoomOnline(qctx, string(room))
		cancel()
		n, partial = max(n, c), err != nil
	}
	b := append([]byte(`{"room":`), appendJSONString(nil, string(room))...)
	b = append(b, `,"online":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, partial))
}

// hMembers pages a room's members. Standalone, the cursor is "s" and the
// table's member slot in base 36; in cluster mode it is "c" and the last
// user returned, in byte order of user id (cluster.EncodeCursor). Both are
// opaque to clients; anything else is a 400 naming cursor.
func (s *Server) hMembers(ctx *fasthttp.RequestCtx, raw []byte) {
	room, ok := pathID(ctx, raw, "room")
	if !ok {
		return
	}
	limit, ok := intArg(ctx, "limit", defaultMembersLimit, 1, maxMembersLimit)
	if !ok {
		return
	}
	const badCursor = "cursor must be a next_cursor value from an earlier page"
	cursor := string(ctx.QueryArgs().Peek("cursor"))
	var (
		members []shardmap.Member
		next    string
		partial bool
	)
	if s.cl != nil {
		after, err := cluster.DecodeCursor(cursor)
		if err != nil {
			jsonError(ctx, fasthttp.StatusBadRequest, badCursor)
			return
		}
		qctx, cancel := s.queryCtx()
		members, next, err = s.cl.Members(qctx, string(room), after, limit, time.Now().UnixMilli())
		cancel()
		if partial = err != nil; partial {
			members, next = s.localMembersAfter(room, after, limit)
		}
		if next != "" {
			next = cluster.EncodeCursor(next)
		}
	} else {
		var slot uint64
		if cursor != "" {
			digits, ok := strings.CutPrefix(cursor, "s")
			v, err := strconv.ParseUint(digits, 36, 64)
			if !ok || err != nil || v == 0 {
				jsonError(ctx, fasthttp.StatusBadRequest, badCursor)
				return
			}
			slot = v
		}
		var n uint64
		members, n = s.m.Members(room, slot, limit, nil)
		if n != 0 {
			next = "s" + strconv.FormatUint(n, 36)
		}
	}
	b := append([]byte(`{"room":`), appendJSONString(nil, string(room))...)
	b = append(b, `,"members":[`...)
	for i, mb := range members {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"user":`...)
		b = appendJSONString(b, mb.User)
		b = append(b, `,"last_seen":`...)
		b = appendTime(b, mb.LastSeen)
		b = append(b, `,"state":`...)
		b = appendState(b, mb.State)
		b = appendConns(b, mb.Conns, mb.State, mb.LastSeen)
		b = append(b, '}')
	}
	b = append(b, `],"next_cursor":`...)
	if next == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, next)
	}
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, partial))
}

// localMembersAfter is the partial fallback of cluster paging: this node's
// members of room, in the cluster's order and with the same cursors.
func (s *Server) localMembersAfter(room []byte, after string, limit int) ([]shardmap.Member, string) {
	var all []shardmap.Member
	var cur uint64
	for {
		var next uint64
		all, next = s.m.Members(room, cur, maxMembersLimit, all)
		if next == 0 {
			break
		}
		cur = next
	}
	sort.Slice(all, func(i, j int) bool { return all[i].User < all[j].User })
	i := sort.Search(len(all), func(i int) bool { return all[i].User > after })
	all = all[i:]
	if len(all) > limit {
		return all[:limit], all[limit-1].User
	}
	return all, ""
}

func (s *Server) hTopRooms(ctx *fasthttp.RequestCtx) {
	n, ok := intArg(ctx, "top", defaultTopRooms, 1, maxTopRooms)
	if !ok {
		return
	}
	rooms, partial := s.m.TopRooms(n, nil), false
	if s.cl != nil {
		qctx, cancel := s.queryCtx()
		remote, err := s.cl.TopRooms(qctx, n)
		cancel()
		partial = err != nil
		byRoom := make(map[string]int, len(rooms)+len(remote))
		for _, r := range remote {
			byRoom[r.Room] = r.Online
		}
		for _, r := range rooms {
			byRoom[r.Room] = max(byRoom[r.Room], r.Online)
		}
		rooms = rooms[:0]
		for room, online := range byRoom {
			rooms = append(rooms, shardmap.RoomCount{Room: room, Online: online})
		}
		cluster.SortRooms(rooms)
		rooms = rooms[:min(len(rooms), n)]
	}
	b := []byte(`{"rooms":[`)
	for i, r := range rooms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"room":`...)
		b = appendJSONString(b, r.Room)
		b = append(b, `,"online":`...)
		b = strconv.AppendInt(b, int64(r.Online), 10)
		b = append(b, '}')
	}
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(append(b, ']'), partial))
}

func (s *Server) hStats(ctx *fasthttp.RequestCtx) {
	st, partial := s.m.Stats(), false
	if s.cl != nil {
		qctx, cancel := s.queryCtx()
		cst, err := s.cl.ClusterStats(qctx)
		cancel()
		partial = err != nil
		st.OnlineUsers = max(st.OnlineUsers, cst.OnlineUsers)
		st.Sessions = max(st.Sessions, cst.Sessions)
		st.Rooms = max(st.Rooms, cst.Rooms)
		// Redis keeps sessions, not connections: this node's connections,
		// and at least one per session of the cluster.
		st.Connections = max(st.Connections, st.Sessions)
	}
	b := fmt.Appendf(nil, `{"online_users":%d,"sessions":%d,"rooms":%d,"connections":%d`, st.OnlineUsers, st.Sessions, st.Rooms, st.Connections)
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, partial))
}
