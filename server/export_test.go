package server

import (
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/webhook"
	"github.com/presenced/presenced/shardmap"
)

// What the external tests (package server_test, started through
// internal/servertest) reach that a client cannot: the cluster node (to
// crash its writer, read Redis directly, wait for its first connection),
// the table (to load 100,000 sessions without 100,000 requests), the
// write-ahead log (its commit counters, to tell a reply from a commit) and
// the webhook deliverer (lease and queue). Only test binaries have these.

// ClusterForTest is the node's Redis replication; nil without --redis.
func (s *Server) ClusterForTest() *cluster.Node { return s.cl }

// TableForTest is the node's in-memory session table.
func (s *Server) TableForTest() *shardmap.Map { return s.m }

// StoreForTest is the node's write-ahead log; nil without --data-dir.
func (s *Server) StoreForTest() *persist.Store { return s.store }

// HooksForTest is the webhook deliverer; nil without --webhook-url.
func (s *Server) HooksForTest() *webhook.Deliverer { return s.hooks.Load() }

// HeartbeatForTest applies one HTTP heartbeat without a token, as the
// handler does after parsing (the benchmarks' hot path).
func (s *Server) HeartbeatForTest(user, room []byte, nowMs int64) {
	s.heartbeat(trHTTP, user, room, nil, nil, nowMs)
}

// ShedForTest puts the node into shedding as a check in which the kernel
// dropped every datagram would (see overload.go). The monitor's own checks
// see no overload after it and end it only after --overload-cooldown.
func (s *Server) ShedForTest() {
	_, mono := s.clk.Now()
	s.ovl.step(mono, 0, 0)     // primes the state machine, or sees nothing new
	s.ovl.step(mono, 1<<40, 0) // every datagram of the check dropped
}
