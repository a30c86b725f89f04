package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/shardmap"
)

// Cluster mode (--redis): the node replicates its change log to Redis
// through a cluster.Node, answers queries for the whole cluster (merged with
// its own state) and streams the cluster-wide events, not its own.

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
	cc.LeaveDelay = s.cfg.LeaveDelay
	cl, err := cluster.New(cc, s.m.RangeState, clusterSink{s})
	if err != nil {
		return &UsageError{fmt.Errorf("invalid cluster config: %w", err)}
	}
	s.cl = cl
	s.bus.SetSource(cl)
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

// startCluster connects the cluster node; the change pump (changes.go)
// feeds its writer once Start has replayed the log.
func (s *Server) startCluster() error {
	if s.cl == nil {
		return nil
	}
	if err := s.cl.Start(); err != nil {
		return &UsageError{fmt.Errorf("--redis: %w", err)}
	}
	return nil
}

// closeCluster flushes the writer once intake has stopped and the change
// log was drained for the last time (bounded by ctx).
func (s *Server) closeCluster(ctx context.Context) error {
	return s.cl.Close(ctx)
}

// clusterLeave applies an accepted leave to the whole cluster (with all:
// every session of the user), whether or not this node holds the session:
// the leave may come through another node than the heartbeats. A
// disconnect (a closed WebSocket) ends the one session with that reason.
// It does not block; the leave reaches Redis with the writer's next batch.
// Server.endConns calls it for every transport.
func (s *Server) clusterLeave(user, room []byte, all bool, now int64, reason shardmap.Reason) {
	switch {
	case s.cl == nil:
	case reason == shardmap.ReasonDisconnect && !all:
		s.cl.OfferDisconnect(user, room, now)
	default:
		s.cl.OfferLeave(user, room, all, now)
	}
}

// abortCluster stops the cluster node when Start fails after starting it.
func (s *Server) abortCluster() {
	if s.cl != nil {
		s.cl.Kill()
	}
}

// clusterSink hands the cluster-wide events, read from the Redis Stream, to
// this node's event bus. An explicit leave decided anywhere also ends this
// node's copy of the session, so the next heartbeat here is a fresh join,
// as on a single node (its own change then writes a leave that finds
// nothing and emits nothing).
type clusterSink struct{ s *Server }

func (c clusterSink) SetFloor(id events.ID) { c.s.bus.SetFloor(id) }
func (c clusterSink) Rebase(id events.ID)   { c.s.bus.Rebase(id) }

func (c clusterSink) Append(ev *events.Event) bool {
	if ev.Type == events.Leave && (ev.Reason == events.ReasonLeft || ev.Reason == events.ReasonDisconnect) {
		c.s.m.Leave([]byte(ev.User), []byte(ev.Room), time.Now().UnixMilli())
	}
	return c.s.bus.Append(ev)
}

func (s *Server) registerClusterMetrics() {
	r := s.reg
	r.gaugeFunc("presenced_redis_up", "1 while queries answer for the whole cluster: Redis answered the last health check and every fault since was repaired by a re-assert.", func() float64 {
		if s.cl.Up() {
			return 1
		}
		return 0
	})
	r.counterFunc("presenced_redis_errors_total", "Failed Redis round trips (writes, reaps, health checks, queries).", func() float64 { return float64(s.cl.Stats().Errors) })
	r.counterFuncVec("presenced_redis_master_errors_total", "Failed Redis commands or pipelines, per Redis address (each master of a Redis Cluster).", "master", func(emit func(string, float64)) {
		for a, n := range s.cl.Stats().MasterErrors {
			emit(a, float64(n))
		}
	})
	r.counterFunc("presenced_redis_partial_seconds_total", "Seconds this node answered from its own table only (Redis unreachable or a fault not yet repaired), since start.", func() float64 { return s.cl.Stats().Partial.Seconds() })
	r.counterFunc("presenced_redis_commands_total", "Commands sent to Redis in pipelines.", func() float64 { return float64(s.cl.Stats().Commands) })
	r.gaugeFunc("presenced_redis_events_waiting", "Events this node decided that wait for Redis to take them (kept in order, written with their original time).", func() float64 { return float64(s.cl.Stats().EventsWaiting) })
	r.counterFunc("presenced_redis_events_lost_total", "Decided events dropped beyond the waiting bound (100,000); the stream gets a reset entry instead.", func() float64 { return float64(s.cl.Stats().EventsLost) })
	r.counterFunc("presenced_redis_dropped_changes_total", "Changes dropped because the Redis writer's queue was full (a re-assert follows).", func() float64 { return float64(s.cl.Stats().Dropped) })
	r.counterFunc("presenced_redis_reasserts_total", "Times this node re-asserted all its sessions in Redis and repaired the room side (after start and after every fault).", func() float64 { return float64(s.cl.Stats().Reasserts) })
	r.gaugeFunc("presenced_redis_queue_depth", "Changes waiting for the Redis writer.", func() float64 { return float64(s.cl.Stats().QueueDepth) })
	r.gaugeFunc("presenced_replication_lag_seconds", "Time from a change entering the Redis writer's queue to its write (last batch, or the oldest waiting change).", func() float64 { return s.cl.Stats().Lag.Seconds() })
	r.histogramFunc("presenced_redis_pipeline_duration_seconds", "Redis pipeline round-trip time in seconds.", cluster.PipelineBounds, func() ([]uint64, float64) {
		st := s.cl.Stats()
		return st.Pipelines, st.PipelineSum
	})
	r.counterFunc("presenced_cluster_partial_answers_total", "Queries answered from this node alone because Redis did not answer in time.", func() float64 { return float64(s.partial.Load()) })
}
