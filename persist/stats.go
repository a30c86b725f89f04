package persist

import (
	"sync/atomic"
	"time"
)

// SyncLatencyBounds are the upper bounds, in seconds, of the sync-latency
// histogram buckets in Stats.SyncLatencyCounts (a last +Inf bucket is
// implied by Stats.SyncCount).
var SyncLatencyBounds = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// Stats is a snapshot of the store's counters. Counters only grow.
type Stats struct {
	SessionSets    uint64 // session records written (upserts)
	SkippedRefresh uint64 // refreshes not written: the logged expiry was far enough ahead (Config.RefreshMargin)
	SessionDeletes uint64 // session records deleted (ended sessions, expiries found by Replay)
	LastSeenWrites uint64 // last-seen records written
	SweepDeletes   uint64 // last-seen records deleted by the sweep
	Batches        uint64 // batches committed

	CommitErrors   uint64 // failed commits without fsync
	SyncErrors     uint64 // failed commits with fsync (write or sync failed)
	Reopens        uint64 // times the DB was reopened after a fatal Pebble error
	DroppedChanges uint64 // changes dropped: backlog over MaxPendingBytes, or unencodable ids
	PendingBytes   int64  // taken by Add, not yet committed: the intake until the next cycle, and the backlog while commits fail
	Compactions    uint64 // manual compactions of the session and last-seen ranges

	LastCommitDuration time.Duration // duration of the last successful commit

	// SyncLatencyCounts[i] is the number of synced commits that took at most
	// SyncLatencyBounds[i] seconds: cumulative, as a Prometheus histogram
	// wants. SyncCount and SyncSumSeconds complete it.
	SyncLatencyCounts [len(SyncLatencyBounds)]uint64
	SyncCount         uint64
	SyncSumSeconds    float64

	ReplayDuration time.Duration
	ReplayLive     uint64
	ReplayExpired  uint64
	Unclean        bool   // the previous process did not close the store
	LostCommits    uint64 // synced commits found missing from the log at Open (see WALDamage)

	DiskBytes uint64 // on-disk size of the database (Pebble DiskSpaceUsage)
}

type counters struct {
	sessionSets, sessionDeletes, lastSeenWrites, sweepDeletes, batches atomic.Uint64
	commitErrors, syncErrors, reopens, dropped, compactions            atomic.Uint64
	skippedRefresh                                                     atomic.Uint64
	pendingBytes, lastCommitNanos                                      atomic.Int64

	syncBuckets [len(SyncLatencyBounds)]atomic.Uint64 // not cumulative
	syncCount   atomic.Uint64
	syncSumNs   atomic.Int64
}

func (c *counters) observeSync(d time.Duration) {
	sec := d.Seconds()
	for i, b := range SyncLatencyBounds {
		if sec <= b {
			c.syncBuckets[i].Add(1)
			break
		}
	}
	c.syncCount.Add(1)
	c.syncSumNs.Add(int64(d))
}

// Stats returns a snapshot of the counters and the database size.
func (s *Store) Stats() Stats {
	c := &s.ctr
	st := Stats{
		SessionSets:        c.sessionSets.Load(),
		SkippedRefresh:     c.skippedRefresh.Load(),
		SessionDeletes:     c.sessionDeletes.Load(),
		LastSeenWrites:     c.lastSeenWrites.Load(),
		SweepDeletes:       c.sweepDeletes.Load(),
		Batches:            c.batches.Load(),
		CommitErrors:       c.commitErrors.Load(),
		SyncErrors:         c.syncErrors.Load(),
		Reopens:            c.reopens.Load(),
		DroppedChanges:     c.dropped.Load(),
		PendingBytes:       c.pendingBytes.Load(),
		Compactions:        c.compactions.Load(),
		LastCommitDuration: time.Duration(c.lastCommitNanos.Load()),
		SyncCount:          c.syncCount.Load(),
		SyncSumSeconds:     time.Duration(c.syncSumNs.Load()).Seconds(),
	}
	var cum uint64
	for i := range c.syncBuckets {
		cum += c.syncBuckets[i].Load()
		st.SyncLatencyCounts[i] = cum
	}
	s.mu.Lock()
	st.ReplayDuration = s.mu.replay.Duration
	st.ReplayLive = uint64(s.mu.replay.Live)
	st.ReplayExpired = uint64(s.mu.replay.Expired)
	st.LostCommits = s.mu.lost.LostCommits
	s.mu.Unlock()
	st.Unclean = s.unclean.Load()
	s.dbMu.RLock()
	if s.db != nil {
		st.DiskBytes = s.db.Metrics().DiskSpaceUsage()
	}
	s.dbMu.RUnlock()
	return st
}
