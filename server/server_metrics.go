package server

import (
	"sync"
	"time"

	"github.com/presenced/presenced/persist"
)

// serverMetrics are the counters the intake paths bump. Each is resolved at
// start-up, so recording is one atomic add.
type serverMetrics struct {
	heartbeats [numTransports][numOutcomes]*counter
	leaves     [numTransports][numOutcomes]*counter
	udpDropped []*counter // by wire drop reason, see udpDropReasons
	udpIn      *counter
	udpReplies *counter
	httpTooBig *counter
	joins      *counter
	leavesLeft *counter
	// leavesTimeout counts expiries.
	leavesTimeout *counter
	// leavesDisconnect counts sessions ended by their WebSocket closing.
	leavesDisconnect *counter
	httpLatency      []*histogram // by route
	// lateness observes, per refresh, how far past --interval it came.
	lateness *histogram
	// httpConnRejected counts connections refused by connLimiter, by connReject.
	httpConnRejected []*counter
	// udpAcksDropped counts --fsync=always acks not sent, by ackDrop.
	udpAcksDropped []*counter
}

// latenessBuckets are upper bounds in seconds; 0 counts on-time heartbeats.
var latenessBuckets = []float64{0, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// route labels an HTTP request for the latency histogram.
type route uint8

const (
	rtHeartbeat route = iota
	rtHeartbeats
	rtLeave
	rtUser
	rtStatus
	rtRoom
	rtMembers
	rtRooms
	rtStats
	rtEvents
	rtWS
	rtUI
	rtHealth
	rtMetrics
	rtOther
	numRoutes
)

var routeLabel = [numRoutes]string{"heartbeat", "heartbeats", "leave", "user", "status", "room", "members", "rooms", "stats", "events", "ws", "ui", "health", "metrics", "other"}

func newServerMetrics(r *registry) *serverMetrics {
	m := &serverMetrics{}
	var labels [][]string
	for t := range numTransports {
		for o := range numOutcomes {
			labels = append(labels, []string{transportLabel[t], outcome(o).String()})
		}
	}
	hb := r.counters("presenced_heartbeats_total", "Heartbeats received, by transport and outcome (ok or the rejection reason).", []string{"transport", "outcome"}, labels...)
	lv := r.counters("presenced_leave_requests_total", "Explicit leave requests, by transport and outcome.", []string{"transport", "outcome"}, labels...)
	for t := range numTransports {
		for o := range numOutcomes {
			m.heartbeats[t][o] = hb[int(t)*int(numOutcomes)+int(o)]
			m.leaves[t][o] = lv[int(t)*int(numOutcomes)+int(o)]
		}
	}
	m.udpIn = r.counter("presenced_udp_datagrams_total", "UDP datagrams received.")
	m.udpDropped = r.counterVec("presenced_udp_dropped_datagrams_total", "UDP datagrams dropped without a reply, by reason.", "reason", udpDropReasons...)
	m.udpReplies = r.counter("presenced_udp_replies_total", "UDP acknowledgements sent.")
	m.httpTooBig = r.counter("presenced_http_body_too_large_total", "HTTP requests refused with 413 because the body exceeded --max-body-bytes.")
	m.httpConnRejected = r.counterVec("presenced_http_rejected_connections_total", "HTTP connections refused on accept, by reason: max_conns (--http-max-conns) or per_ip (--http-max-conns-per-ip).", "reason", connRejectLabels...)
	m.udpAcksDropped = r.counterVec("presenced_udp_acks_dropped_total", "UDP acks not sent under --fsync=always, by reason: queue_full (--udp-max-pending-acks), not_durable (the sync failed) or shutdown.", "reason", ackDropLabels...)
	m.joins = r.counter("presenced_joins_total", "Sessions started (join events).")
	leaves := r.counterVec("presenced_leaves_total", "Sessions ended (leave events), by reason: left (explicit), timeout (expired) or disconnect (its WebSocket closed).", "reason", "left", "timeout", "disconnect")
	m.leavesLeft, m.leavesTimeout, m.leavesDisconnect = leaves[0], leaves[1], leaves[2]
	m.lateness = r.histogram("presenced_heartbeat_lateness_seconds", "How late a session's heartbeat came: time since its previous heartbeat beyond --interval, in seconds (0 when on time).", latenessBuckets)
	m.httpLatency = r.histogramVec("presenced_http_request_duration_seconds", "HTTP request handling time in seconds, by route.", latencyBuckets, "route", routeLabel[:]...)
	return m
}

func (m *serverMetrics) count(tr transport, o outcome)      { m.heartbeats[tr][o].Inc() }
func (m *serverMetrics) countLeave(tr transport, o outcome) { m.leaves[tr][o].Inc() }

// registerGauges adds the gauges read from the map and the log at scrape time.
func (s *Server) registerGauges() {
	r := s.reg
	r.gaugeFunc("presenced_last_seen_memory_users", "Offline users whose last-seen is kept in memory (--last-seen-memory-users): the only copy without --data-dir, until the next commit with one.", func() float64 { return float64(s.departed.len()) })
	r.counterFunc("presenced_last_seen_memory_evictions_total", "Offline users' last-seen times dropped because --last-seen-memory-users was reached.", func() float64 {
		if s.departed == nil {
			return 0
		}
		return float64(s.departed.evictions.Load())
	})
	r.gaugeFunc("presenced_sessions", "Live sessions (user, room pairs) on this node.", func() float64 { return float64(s.m.Stats().Sessions) })
	r.gaugeFunc("presenced_online_users", "Users with at least one live session on this node.", func() float64 { return float64(s.m.Stats().OnlineUsers) })
	r.gaugeFunc("presenced_connections", "Live connections (tabs, devices) of this node's sessions; a session without named connections counts one.", func() float64 { return float64(s.m.Stats().Connections) })
	r.gaugeFunc("presenced_rooms", "Rooms with at least one live session on this node.", func() float64 { return float64(s.m.Stats().Rooms) })
	r.gaugeFunc("presenced_ready", "1 when /readyz answers 200.", func() float64 {
		if s.Ready() {
			return 1
		}
		return 0
	})
	r.gaugeFunc("presenced_event_subscribers", "Open GET /v1/events streams.", func() float64 { return float64(s.streams.Load()) })
	r.counterFuncVec("presenced_event_streams_refused_total", "GET /v1/events streams refused (429), by limit flag.", "limit", func(emit func(string, float64)) {
		for i := range numStreamLimits {
			emit(streamLimitLabel[i], float64(s.streamIPs.refused[i].Load()))
		}
	})
	r.counterFunc("presenced_events_published_total", "Events taken into the event history (after the leave debounce).", func() float64 { return float64(s.bus.Stats().Published) })
	r.gaugeFunc("presenced_event_history_events", "Events held in this node's event history for resume.", func() float64 { return float64(s.bus.Stats().Held) })
	r.gaugeFunc("presenced_event_history_bytes", "Estimated memory of the event history (bounded by --event-history-bytes).", func() float64 { return float64(s.bus.Stats().HistoryBytes) })
	r.counterFunc("presenced_events_dropped_total", "Times a slow stream's live queue was full: it then re-reads what it missed from the history, or gets a reset.", func() float64 { return float64(s.bus.Stats().Overflows) })
	r.counterFunc("presenced_event_resets_total", "Reset events sent because the history could not cover a stream's gap.", func() float64 { return float64(s.bus.Stats().Resets) })
	r.gaugeFunc("presenced_leaves_held", "Leave events held for --leave-delay (a rejoin within it cancels both).", func() float64 { return float64(s.deb.Held()) })
	s.registerPersistMetrics()
	s.registerWebhookMetrics()
}

// registerPersistMetrics adds the write-ahead log's metrics; they read zero
// when the node runs without a data directory. One scrape reads one
// snapshot (persist.Stats asks Pebble for its disk usage).
func (s *Server) registerPersistMetrics() {
	r := s.reg
	var (
		mu   sync.Mutex
		snap persist.Stats
		at   time.Time
	)
	stats := func() *persist.Stats {
		mu.Lock()
		defer mu.Unlock()
		if s.store != nil && time.Since(at) > 500*time.Millisecond {
			snap, at = s.store.Stats(), time.Now()
		}
		cp := snap // a copy: concurrent scrapes refresh snap
		return &cp
	}
	c := func(name, help string, f func(*persist.Stats) uint64) {
		r.counterFunc(name, help, func() float64 { return float64(f(stats())) })
	}
	c("presenced_wal_records_total", "Records written to the write-ahead log (session upserts, session deletes, last-seen writes).",
		func(st *persist.Stats) uint64 { return st.SessionSets + st.SessionDeletes + st.LastSeenWrites })
	c("presenced_wal_refreshes_skipped_total", "Session refreshes not written to the write-ahead log because the expiry it holds is still --wal-refresh-margin ahead.",
		func(st *persist.Stats) uint64 { return st.SkippedRefresh })
	c("presenced_wal_batches_total", "Batches committed to the write-ahead log.", func(st *persist.Stats) uint64 { return st.Batches })
	c("presenced_wal_errors_total", "Failed write-ahead log commits (write or sync errors).", func(st *persist.Stats) uint64 { return st.CommitErrors + st.SyncErrors })
	c("presenced_wal_reopens_total", "Times the write-ahead log was reopened after a fatal storage error.", func(st *persist.Stats) uint64 { return st.Reopens })
	c("presenced_wal_dropped_changes_total", "Changes dropped because the write-ahead log backlog exceeded its bound.", func(st *persist.Stats) uint64 { return st.DroppedChanges })
	c("presenced_wal_last_seen_expired_total", "Last-seen records deleted after --last-seen-retention.", func(st *persist.Stats) uint64 { return st.SweepDeletes })
	r.gaugeFunc("presenced_wal_pending_bytes", "Changes waiting to be committed: those added since the last commit cycle, and the backlog of failed commits.", func() float64 { return float64(stats().PendingBytes) })
	r.gaugeFunc("presenced_wal_disk_bytes", "On-disk size of the write-ahead log store.", func() float64 { return float64(stats().DiskBytes) })
	r.gaugeFunc("presenced_wal_healthy", "1 while the write-ahead log commits and syncs (0 also without --data-dir).", func() float64 {
		if s.store != nil && s.store.Healthy() == nil {
			return 1
		}
		return 0
	})
	r.gaugeFuncVec("presenced_wal_state", "State of the write-ahead log, one series per state set to 1 when current: ok, failing (commits fail, retried), unavailable (reopening after a fatal storage error), corrupt (a checksum failed: run presenced repair), opening, closed (also without --data-dir).", "state",
		func(emit func(string, float64)) {
			cur := s.storeState()
			for _, st := range persist.States() {
				v := 0.0
				if st == cur {
					v = 1
				}
				emit(st.String(), v)
			}
		})
	r.gaugeFunc("presenced_wal_lost_commits", "Synced write-ahead log commits found missing at start (a log damaged or cut short after the fact); 0 when intact. See /readyz.", func() float64 { return float64(stats().LostCommits) })
	r.gaugeFunc("presenced_wal_replay_seconds", "How long replaying the write-ahead log took at start-up.", func() float64 { return stats().ReplayDuration.Seconds() })
	r.histogramFunc("presenced_wal_sync_duration_seconds", "Write-ahead log commit-with-fsync latency in seconds.", persist.SyncLatencyBounds[:],
		func() ([]uint64, float64) {
			st := stats()
			counts := make([]uint64, len(st.SyncLatencyCounts)+1)
			var prev uint64
			for i, cum := range st.SyncLatencyCounts {
				counts[i], prev = cum-prev, cum
			}
			counts[len(counts)-1] = st.SyncCount - prev
			return counts, st.SyncSumSeconds
		})
}
