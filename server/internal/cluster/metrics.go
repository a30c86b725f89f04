package cluster

import (
	"sort"
	"sync/atomic"
	"time"
)

// PipelineBounds are the upper bounds, in seconds, of the pipeline duration histogram.
var PipelineBounds = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

type latencyHist struct {
	counts []atomic.Uint64
	sumNs  atomic.Uint64
}

func (h *latencyHist) init() { h.counts = make([]atomic.Uint64, len(PipelineBounds)+1) }

func (h *latencyHist) observe(d time.Duration) {
	i := sort.SearchFloat64s(PipelineBounds, d.Seconds())
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
}

// Stats is a snapshot of the node's replication metrics.
type Stats struct {
	Up     bool   // answering for the whole cluster (Node.Up)
	Errors uint64 // failed round trips
	// MasterErrors counts failed commands or pipelines per Redis address
	// (per master of a Redis Cluster; "sentinel:<name>" with Sentinel).
	MasterErrors map[string]uint64
	// Partial is the time spent not answering for the whole cluster since
	// Start (including the start until the first re-assert).
	Partial time.Duration
	Dropped uint64 // changes dropped because the queue was full
	// EventsWaiting are decided events not yet written to the stream
	// (Redis unreachable); EventsLost those dropped beyond the bound
	// (maxPendingEvents), replaced by a reset entry.
	EventsWaiting int64
	EventsLost    uint64
	Commands      uint64 // commands sent in pipelines
	Reasserts     uint64
	QueueDepth    int64
	Lag           time.Duration
	PipelineSum   float64  // seconds
	Pipelines     []uint64 // per bucket of PipelineBounds, plus +Inf
}

// Stats returns the node's metrics. Lag is the time from a change entering
// the queue to its batch being written, for the last batch, or the age of
// the oldest queued change if that is larger.
func (n *Node) Stats() Stats {
	st := Stats{
		Up: n.Up(), Partial: n.partialTime(), MasterErrors: map[string]uint64{}, Errors: n.errs.Load(), Dropped: n.dropped.Load(), Commands: n.cmds.Load(),
		Reasserts: n.asserts.Load(), QueueDepth: n.queued.Load(),
		EventsWaiting: n.pendingEvents.Load(), EventsLost: n.eventsLost.Load(),
		PipelineSum: float64(n.hist.sumNs.Load()) / 1e9,
	}
	lag := time.Duration(n.lagNs.Load())
	n.in.Lock()
	if n.in.n > 0 {
		lag = max(lag, time.Duration(monoNs()-n.in.oldest))
	}
	n.in.Unlock()
	st.Lag = lag
	n.h.masterErrs.Range(func(k, v any) bool {
		st.MasterErrors[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	for i := range n.hist.counts {
		st.Pipelines = append(st.Pipelines, n.hist.counts[i].Load())
	}
	return st
}

// monoStart anchors monoNs.
var monoStart = time.Now()

// monoNs is nanoseconds on the monotonic clock (since the process
// started): the replication lag is measured with it, so a step of the wall
// clock neither hides nor invents lag. Wall time is kept only
// for the expiries stored in Redis.
func monoNs() int64 { return int64(time.Since(monoStart)) }
