package server

import (
	"context"
	"fmt"
	"time"

	"github.com/presenced/presenced/shardmap"
)

// The change pipeline. With a data dir or Redis the presence table keeps a
// change log (shardmap.Config.TrackChanges: each session's latest state
// since the last drain, and its end). One goroutine of the server, the
// pump, drains it every pump interval and hands each change to the sinks:
//
//	table's change log ──pump──┬─> persist.Store.Add ──> intake ──> committer ──> Pebble WAL
//	                           └─> cluster.Node.Offer, Kick ──> Redis writer ──> Redis
//
// (every 50 ms; with a data dir at most a quarter of --fsync-interval).
//
// Both sinks copy what they keep and never block, so neither waits for the
// other: replication goes on while the log's disk is full or hangs, and a
// Redis outage does not hold the log. Two other callers drain the same way
// on their own goroutine: the log's flush hook (WaitDurable, which
// --fsync=always replies wait for, and the log's Close) and Shutdown's
// final drain. Concurrent drains keep each user's order: Drain calls the
// sinks under the user's shard lock.

// pumpInterval is how often the pump drains the change log.
const pumpInterval = 50 * time.Millisecond

// tracksChanges reports whether the table keeps a change log, that is
// whether there is a sink to drain it into.
func (s *Server) tracksChanges() bool { return s.store != nil || s.cl != nil }

// pumpPeriod is the pump's period: pumpInterval, and with a data dir at
// most a quarter of --fsync-interval. A change then waits at most a
// quarter interval for the pump and half an interval for the committer's
// cycle, which keeps the log's promise (a crash loses at most the last
// --fsync-interval, given a commit under a quarter of it).
func (s *Server) pumpPeriod() time.Duration {
	d := pumpInterval
	if s.store != nil {
		d = min(d, max(s.cfg.Persist.FsyncInterval/4, time.Millisecond))
	}
	return d
}

// sinkChange hands one change to every sink. It is the Drain callback:
// it runs under a shard lock and must not block.
func (s *Server) sinkChange(c *shardmap.Change) {
	if s.store != nil {
		s.store.Add(c)
	}
	if s.cl != nil {
		s.cl.Offer(c)
	}
}

// drainChanges drains the change log into the sinks once, on the calling
// goroutine, and wakes the Redis writer if it got anything.
func (s *Server) drainChanges() {
	if s.m.Drain(s.sink) > 0 && s.cl != nil {
		s.cl.Kick()
	}
}

// startPump starts the pump when the table keeps a change log. Start calls
// it once the log is replayed and nothing can fail any more.
func (s *Server) startPump() {
	if !s.tracksChanges() {
		return
	}
	s.pumpDone = make(chan struct{})
	s.routines.Go("change pump", s.pumpLoop)
}

func (s *Server) pumpLoop() {
	defer close(s.pumpDone)
	t := time.NewTicker(s.pumpPeriod())
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return // Shutdown drains once more, after the sweeper stopped
		case <-t.C:
			s.drainChanges()
		}
	}
}

// stopPump waits for the pump to return (it returns once s.quit is
// closed), bounded by ctx.
func (s *Server) stopPump(ctx context.Context) error {
	if s.pumpDone == nil {
		return nil
	}
	select {
	case <-s.pumpDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cannot stop change pump: %w", ctx.Err())
	}
}
