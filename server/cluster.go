package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/cluster"
	"github.com/presenced/presenced/server/wire"
	"github.com/presenced/presenced/shardmap"
)

// Cluster mode (--redis): the node replicates its change log to Redis
// through a cluster.Node, answers queries for the whole cluster (merged with
// its own state) and streams the cluster-wide events, not its own.

// pumpInterval is how often the change log is drained when no write-ahead
// log drains it.
const pumpInterval = 50 * time.Millisecond

// newClusterNode builds the cluster node from the server config (nothing
// connects until Start).
func (s *Server) newClusterNode() error {
	cc := s.cfg.Cluster
	cc.Addrs, cc.MasterName, cc.TTL = s.cfg.Redis, s.cfg.RedisMaster, s.cfg.TTL
	cc.NodeID = s.cfg.NodeID
	if cc.NodeID == "" {
		cc.NodeID = defaultNodeID(s.cfg.HTTPAddr)
	}
	cc.Logger = s.log.With("component", "cluster")
	cl, err := cluster.New(cc, s.m.Range, s.clusterEvent)
	if err != nil {
		return &UsageError{fmt.Errorf("invalid cluster config: %w", err)}
	}
	s.cl = cl
	s.registerClusterMetrics()
	return nil
}

// defaultNodeID is hostname:port of the HTTP address, or hostname-random
// when the port is chosen at start.
func defaultNodeID(httpAddr string) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "presenced"
	}
	if _, port, err := net.SplitHostPort(httpAddr); err == nil && port != "0" && port != "" {
		return host + ":" + port
	}
	return fmt.Sprintf("%s-%x", host, time.Now().UnixNano())
}

// startCluster connects the cluster node and, without a write-ahead log to
// drain the change log, starts the pump that does.
func (s *Server) startCluster() error {
	if s.cl == nil {
		return nil
	}
	if err := s.cl.Start(); err != nil {
		return &UsageError{fmt.Errorf("--redis: %w", err)}
	}
	if s.cfg.DataDir == "" {
		s.pumpDone = make(chan struct{})
		s.goroutine(s.pumpLoop)
	}
	return nil
}

// drainFunc is what the write-ahead log drains the change log with: with a
// cluster, each change is also offered to its writer.
func (s *Server) drainFunc() func(fn func(*shardmap.Change)) int {
	if s.cl == nil {
		return s.m.Drain
	}
	return func(fn func(*shardmap.Change)) int {
		n := s.m.Drain(func(c *shardmap.Change) {
			s.cl.Offer(c)
			fn(c)
		})
		if n > 0 {
			s.cl.Kick()
		}
		return n
	}
}

func (s *Server) pumpLoop() {
	defer close(s.pumpDone)
	t := time.NewTicker(pumpInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			s.m.Drain(s.cl.Offer)
			return
		case <-t.C:
			if s.m.Drain(s.cl.Offer) > 0 {
				s.cl.Kick()
			}
		}
	}
}

// closeCluster flushes the writer once intake has stopped (bounded by ctx).
func (s *Server) closeCluster(ctx context.Context) error {
	if s.pumpDone != nil {
		select {
		case <-s.pumpDone:
		case <-ctx.Done():
		}
	}
	return s.cl.Close(ctx)
}

// clusterLeave applies an accepted explicit leave to the whole cluster (an
// empty room: all the user's rooms), whether or not this node holds the
// session: the leave may come through another node than the heartbeats.
// It does not block; the leave reaches Redis with the writer's next batch.
// Server.leave calls it for both transports once the leave is authorized.
func (s *Server) clusterLeave(user, room []byte, now int64) {
	if s.cl != nil {
		s.cl.OfferLeave(user, room, len(room) == 0, now)
	}
}

// abortCluster stops the cluster node when Start fails after starting it.
func (s *Server) abortCluster() {
	if s.cl != nil {
		s.cl.Kill()
	}
}

// clusterEvent hands a cluster-wide event to this node's event streams. An
// explicit leave decided anywhere also ends this node's copy of the session,
// so the next heartbeat here is a fresh join, as on a single node (its own
// change then writes a leave that finds nothing and emits nothing).
func (s *Server) clusterEvent(ev shardmap.Event) {
	if !ev.Join && ev.Reason == shardmap.ReasonLeft {
		s.m.Leave([]byte(ev.User), []byte(ev.Room), time.Now().UnixMilli())
	}
	if missed := s.hub.publish(ev); missed > 0 {
		s.met.eventsDropped.Add(uint64(missed))
	}
}

func (s *Server) registerClusterMetrics() {
	r := &s.reg
	r.gaugeFunc("presenced_redis_up", "1 while the last Redis round trip succeeded (queries answer for the whole cluster).", func() float64 {
		if s.cl.Up() {
			return 1
		}
		return 0
	})
	r.counterFunc("presenced_redis_errors_total", "Failed Redis round trips (writes, reaps, health checks, queries).", func() float64 { return float64(s.cl.Stats().Errors) })
	r.counterFunc("presenced_redis_commands_total", "Commands sent to Redis in pipelines.", func() float64 { return float64(s.cl.Stats().Commands) })
	r.counterFunc("presenced_redis_dropped_changes_total", "Changes dropped because the Redis writer's queue was full (a re-assert follows).", func() float64 { return float64(s.cl.Stats().Dropped) })
	r.counterFunc("presenced_redis_reasserts_total", "Times this node re-asserted all its sessions in Redis.", func() float64 { return float64(s.cl.Stats().Reasserts) })
	r.gaugeFunc("presenced_redis_queue_depth", "Changes waiting for the Redis writer.", func() float64 { return float64(s.cl.Stats().QueueDepth) })
	r.gaugeFunc("presenced_replication_lag_seconds", "Time from a change entering the Redis writer's queue to its write (last batch, or the oldest waiting change).", func() float64 { return s.cl.Stats().Lag.Seconds() })
	r.histogramFunc("presenced_redis_pipeline_duration_seconds", "Redis pipeline round-trip time in seconds.", cluster.PipelineBounds, func() ([]uint64, float64) {
		st := s.cl.Stats()
		return st.Pipelines, st.PipelineSum
	})
	r.counterFunc("presenced_cluster_partial_answers_total", "Queries answered from this node alone because Redis did not answer in time.", func() float64 { return float64(s.partial.Load()) })
}

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

// cUsers answers GET /v1/users/{user} (one, single) and POST /v1/status.
func (s *Server) cUsers(ctx *fasthttp.RequestCtx, users []string, single bool) {
	qctx, cancel := s.queryCtx()
	defer cancel()
	now := time.Now().UnixMilli()
	cst, err := s.cl.Users(qctx, users, now)
	partial := err != nil
	var b []byte
	if !single {
		b = append(b, `{"users":[`...)
	}
	var rooms []shardmap.RoomSession
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		var lastSeen int64
		var online bool
		rooms, lastSeen, online = s.m.User([]byte(u), rooms[:0])
		if !partial {
			c := &cst[i]
			online = online || c.Online
			lastSeen = max(lastSeen, c.LastSeen)
			rooms = mergeRooms(rooms, c.Rooms)
		}
		if !online && s.store != nil {
			if ms, ok, err := s.store.LastSeen([]byte(u)); err == nil && ok {
				lastSeen = max(lastSeen, ms)
			}
		}
		b = append(b, `{"user":`...)
		b = appendJSONString(b, u)
		b = append(b, `,"online":`...)
		b = strconv.AppendBool(b, online)
		b = append(b, `,"rooms":[`...)
		for j, r := range rooms {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, r.Room)
		}
		b = append(b, `],"last_seen":`...)
		b = appendTime(b, lastSeen)
		if single {
			b = s.endPartial(b, partial)
		} else {
			b = append(b, '}')
		}
	}
	if !single {
		b = append(b, ']')
		b = s.endPartial(b, partial)
	}
	jsonBody(ctx, fasthttp.StatusOK, b)
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

// cStatusUsers parses POST /v1/status in cluster mode; it reports false
// after answering an error.
func (s *Server) cStatusUsers(ctx *fasthttp.RequestCtx) ([]string, bool) {
	var req struct {
		Users []string `json:"users"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		jsonError(ctx, fasthttp.StatusBadRequest, `body must be JSON {"users":[...]} of strings`)
		return nil, false
	}
	if req.Users == nil {
		jsonError(ctx, fasthttp.StatusBadRequest, `"users" must be an array of user ids`)
		return nil, false
	}
	if len(req.Users) > s.cfg.MaxStatusUsers {
		jsonError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("users exceeds max-status-users (%d)", s.cfg.MaxStatusUsers))
		return nil, false
	}
	for i, u := range req.Users {
		if !wire.ValidID([]byte(u), false) {
			jsonError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("users[%d] must be 1 to 128 bytes of UTF-8 without control characters", i))
			return nil, false
		}
	}
	return req.Users, true
}

func (s *Server) cRoom(ctx *fasthttp.RequestCtx, room []byte) {
	qctx, cancel := s.queryCtx()
	defer cancel()
	n, err := s.cl.RoomOnline(qctx, string(room))
	n = max(n, s.m.RoomOnline(room))
	b := append([]byte(`{"room":`), appendJSONString(nil, string(room))...)
	b = append(b, `,"online":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, err != nil))
}

// cMembers pages a room's members in byte order of user id; the cursor is
// the last user returned (opaque to clients).
func (s *Server) cMembers(ctx *fasthttp.RequestCtx, room []byte, limit int) {
	after, err := cluster.DecodeCursor(string(ctx.QueryArgs().Peek("cursor")))
	if err != nil {
		jsonError(ctx, fasthttp.StatusBadRequest, err.Error())
		return
	}
	qctx, cancel := s.queryCtx()
	defer cancel()
	now := time.Now().UnixMilli()
	members, next, err := s.cl.Members(qctx, string(room), after, limit, now)
	partial := err != nil
	if partial {
		members, next = s.localMembersAfter(room, after, limit)
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
		b = append(b, '}')
	}
	b = append(b, `],"next_cursor":`...)
	if next == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, cluster.EncodeCursor(next))
	}
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, partial))
}

// localMembersAfter is the partial fallback of cMembers: this node's
// members of room, in the same order and with the same cursors.
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

func (s *Server) cTopRooms(ctx *fasthttp.RequestCtx, n int) {
	qctx, cancel := s.queryCtx()
	defer cancel()
	rooms, err := s.cl.TopRooms(qctx, n)
	local := s.m.TopRooms(n, nil)
	byRoom := make(map[string]int, len(rooms)+len(local))
	for _, r := range rooms {
		byRoom[r.Room] = r.Online
	}
	for _, r := range local {
		byRoom[r.Room] = max(byRoom[r.Room], r.Online)
	}
	merged := make([]shardmap.RoomCount, 0, len(byRoom))
	for room, online := range byRoom {
		merged = append(merged, shardmap.RoomCount{Room: room, Online: online})
	}
	cluster.SortRooms(merged)
	if len(merged) > n {
		merged = merged[:n]
	}
	b := []byte(`{"rooms":[`)
	for i, r := range merged {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"room":`...)
		b = appendJSONString(b, r.Room)
		b = append(b, `,"online":`...)
		b = strconv.AppendInt(b, int64(r.Online), 10)
		b = append(b, '}')
	}
	b = append(b, ']')
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, err != nil))
}

func (s *Server) cStats(ctx *fasthttp.RequestCtx) {
	qctx, cancel := s.queryCtx()
	defer cancel()
	cst, err := s.cl.ClusterStats(qctx)
	st := s.m.Stats()
	st.OnlineUsers = max(st.OnlineUsers, cst.OnlineUsers)
	st.Sessions = max(st.Sessions, cst.Sessions)
	st.Rooms = max(st.Rooms, cst.Rooms)
	b := fmt.Appendf(nil, `{"online_users":%d,"sessions":%d,"rooms":%d`, st.OnlineUsers, st.Sessions, st.Rooms)
	jsonBody(ctx, fasthttp.StatusOK, s.endPartial(b, err != nil))
}
