package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/internal/routine"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/webhook"
	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/shardmap"
)

// Readiness states, in the order a server passes through them.
const (
	stateStarting int32 = iota
	stateReady
	stateDraining
	stateStopped
)

// Server is one presenced node: the presence table, its write-ahead log and
// the HTTP and UDP listeners feeding it.
type Server struct {
	cfg   Config
	log   *slog.Logger
	m     *shardmap.Map
	store *persist.Store // nil when DataDir is empty
	cl    *cluster.Node  // nil when Redis is empty (standalone node)
	// sink hands one drained change to the log and the Redis writer
	// (sinkChange, built once); pumpDone is closed when the change pump
	// has returned (nil without a change log). See changes.go.
	sink     func(*shardmap.Change)
	pumpDone chan struct{}
	partial  atomic.Uint64 // cluster queries answered from this node alone
	keys     atomic.Pointer[token.Keyring]
	// apiTokens are the bearer tokens of the read endpoints (nil: open).
	apiTokens atomic.Pointer[[][]byte]
	src       *sourceLimiter
	rl        reloadState
	stopPprof func(context.Context) error
	// lastSweep is when the sweeper last finished a pass (monotonic ms,
	// see clock; 0: never); Alive reads it for the systemd watchdog.
	lastSweep atomic.Int64
	// bus holds the event history and the stream subscribers; deb holds
	// leaves for --leave-delay before they reach it (single node).
	bus       *events.Bus
	deb       *events.Debouncer
	big       *bigRooms    // --room-events-max (occupancy.go)
	streams   atomic.Int64 // open GET /v1/events streams
	streamIPs streamsPerIP // and per client address
	ws        *wsHub       // open GET /v1/ws connections
	// sweepDone is closed when the sweeper has returned (nil before Start
	// starts it); Shutdown waits for it before the log's final drain.
	sweepDone chan struct{}
	reg       *registry
	met       *serverMetrics
	start     time.Time
	// hooks delivers events to --webhook-url (nil without it).
	hooks atomic.Pointer[webhook.Deliverer]

	state    atomic.Int32
	stopping atomic.Bool
	quit     chan struct{}
	routines routine.Group // every goroutine the server starts (doc.go)

	ttlMs, intervalMs int64
	// hbReply is the precomputed body of a successful heartbeat;
	// hbReplyShed the one while the node sheds (overload.go).
	hbReply, hbReplyShed []byte
	// ovl is the shedding state machine; drops reads the UDP sockets'
	// kernel drops it watches (overload.go, udp_drops_linux.go).
	ovl   *overload
	drops *kernelDrops
	// replayed counts the sessions restored from the log so far, for
	// /readyz while starting; replayLogEvery is how often the replay logs
	// its progress (5s; tests shorten it) and replayProgress, when set
	// (tests), is called with each count logged.
	replayed       atomic.Int64
	replayLogEvery time.Duration
	replayProgress func(replayed int64)
	// departed keeps offline users' last-seen in memory (the only copy
	// without a data dir; with one, until the log has committed it).
	departed *departedUsers
	// replay refuses replayed v2 datagrams.
	replay *replayTable
	// proxies is --trusted-proxies (nil: none).
	proxies *proxySet
	// clk gives wall time for what is stored, monotonic time for rates
	// and ages (see clock).
	clk clock

	httpSrv *fasthttp.Server
	httpLn  net.Listener
	udp     *udpServer

	// build is what /metrics reports (SetBuildInfo, before Start).
	build BuildInfo
	// corsPol is --cors-origins, parsed once (cors.go).
	corsPol corsPolicy
}

// New builds a server from a validated config. It opens nothing; Start does.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	cfg.derive()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	mc := cfg.Map
	mc.TrackChanges = cfg.DataDir != "" || cfg.Redis != ""
	m, err := shardmap.New(mc)
	if err != nil {
		return nil, fmt.Errorf("cannot create presence table: %w", err)
	}
	s := &Server{
		cfg:        cfg,
		log:        log,
		m:          m,
		start:      time.Now(),
		clk:        newSystemClock(),
		quit:       make(chan struct{}),
		ttlMs:      cfg.TTL.Milliseconds(),
		intervalMs: cfg.Interval.Milliseconds(),
	}
	m.SetMinRefreshGap(cfg.HeartbeatMinGap)
	s.rl.maxBatch.Store(int64(cfg.MaxBatch))
	s.rl.cfg.Store(&cfg)
	s.proxies, _ = parseProxySet(cfg.TrustedProxies) // Validate checked it
	s.replay = newReplayTable(cfg.SourceTableSlots)
	s.src = newSourceLimiter(cfg.SourceTableSlots, int64(cfg.SourceRate), int64(cfg.SourceBurst))
	if cfg.APITokenFile != "" {
		toks, err := loadAPITokens(cfg.APITokenFile)
		if err != nil {
			return nil, &UsageError{fmt.Errorf("--api-token-file: %w", err)}
		}
		s.apiTokens.Store(&toks)
	}
	s.hbReply = fmt.Appendf(nil, `{"interval_ms":%d,"ttl_ms":%d}`, s.intervalMs, s.ttlMs)
	f := int64(cfg.OverloadBackoff)
	s.hbReplyShed = fmt.Appendf(nil, `{"interval_ms":%d,"ttl_ms":%d}`, s.intervalMs*f, s.ttlMs*f)
	s.ovl = newOverload(overloadParams{ratio: cfg.OverloadDropRatio, cooldown: cfg.OverloadCooldown.Milliseconds(),
		maxHold: cfg.OverloadMaxHold.Milliseconds(), grace: s.intervalMs * f})
	s.drops = &kernelDrops{}
	s.replayLogEvery = 5 * time.Second
	if cfg.SecretFile != "" {
		kr, err := token.LoadKeyring(cfg.SecretFile)
		if err != nil {
			return nil, &UsageError{fmt.Errorf("--secret-file: %w", err)}
		}
		s.keys.Store(kr)
	}
	s.bus = events.New(events.Config{History: cfg.EventHistory, HistoryBytes: cfg.EventHistoryBytes, Buffer: eventBuffer, Epoch: uint64(s.start.UnixMilli())})
	s.deb = events.NewDebouncer(cfg.LeaveDelay.Milliseconds(), s.bus.Publish)
	s.big = newBigRooms(cfg.RoomEventsMax)
	// With a data dir too: the log writes an offline user's last-seen at
	// its next commit, and a query right after a leave must not say null.
	s.departed = newDepartedUsers(cfg.LastSeenMemoryUsers, cfg.Persist.LastSeenRetention.Milliseconds())
	if cfg.DataDir != "" {
		// Built now (no I/O) so the HTTP handlers that run while Start
		// replays the log (/metrics reads s.store) see a field that Start
		// never writes.
		pc := cfg.Persist
		pc.Logger = log
		st, err := persist.New(pc)
		if err != nil {
			return nil, fmt.Errorf("cannot create write-ahead log: %w", err)
		}
		s.store = st
	}
	s.sink = s.sinkChange
	s.reg = newRegistry(log)
	s.met = newServerMetrics(s.reg)
	s.build = ReadBuildInfo("", "")
	s.registerBuildInfo()
	s.ws = newWSHub()
	s.corsPol, _ = parseCORSOrigins(cfg.CORSOrigins) // checked by Validate
	// Browsers on an allowed origin may connect: heartbeats carry their own
	// tokens and subscriptions to all rooms need an API token, as for
	// GET /v1/events.
	s.ws.upgrader.CheckOrigin = s.corsPol.allowWS
	s.registerGauges()
	s.registerOverloadMetrics()
	s.registerWSMetrics()
	if cfg.Redis != "" {
		if err := s.newClusterNode(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Start opens the log, replays it, and starts the listeners. /livez answers
// as soon as the HTTP listener is up; /readyz turns 200 only after replay
// and once UDP is listening.
func (s *Server) Start() error {
	if s.keys.Load() == nil {
		s.log.Warn("no --secret-file: running in open mode, heartbeats are not authenticated")
	}
	if err := s.startHTTP(); err != nil {
		return err
	}
	if err := s.startCluster(); err != nil {
		s.stopHTTP(context.Background())
		return err
	}
	if s.cfg.DataDir != "" {
		if err := s.openStore(); err != nil {
			s.stopHTTP(context.Background())
			s.abortCluster()
			return err
		}
	} else {
		s.log.Warn("no --data-dir: presence lives in memory only and is lost on restart")
	}
	if s.cfg.UDPAddr != "" {
		u, err := s.startUDP()
		if err != nil {
			s.stopHTTP(context.Background())
			if s.store != nil {
				_ = s.store.Close()
			}
			s.abortCluster()
			return err
		}
		s.udp = u
	}
	if err := s.startWebhooks(); err != nil {
		s.stopHTTP(context.Background())
		if s.udp != nil {
			_ = s.udp.stop(context.Background())
		}
		if s.store != nil {
			_ = s.store.Close()
		}
		s.abortCluster()
		return err
	}
	s.sweepDone = make(chan struct{})
	s.routines.Go("sweeper", func() {
		defer close(s.sweepDone)
		s.sweepLoop()
	})
	s.startPump()
	s.routines.Go("debounce", s.debounceLoop)
	s.routines.Go("occupancy", s.occupancyLoop)
	if s.udp != nil && s.cfg.OverloadDropRatio > 0 {
		s.routines.Go("overload", s.overloadLoop)
	}
	stopPprof, err := s.startPprof()
	if err != nil {
		s.log.Error("profiles not served", "err", err)
		stopPprof = func(context.Context) error { return nil }
	}
	s.stopPprof = stopPprof
	s.state.Store(stateReady)
	s.log.Info("presenced ready", "http", s.HTTPAddr(), "udp", s.UDPAddr(),
		"ttl", s.cfg.TTL, "interval", s.cfg.Interval, "data_dir", s.cfg.DataDir,
		"fsync", s.cfg.FsyncMode, "sessions", s.m.Stats().Sessions)
	return nil
}

// openStore opens the write-ahead log and replays it into the map. On
// error the store is closed (a damaged or unopenable store ends Start; the
// process exits 1 with the message).
func (s *Server) openStore() error {
	t0 := time.Now()
	st := s.store
	if err := st.Open(); err != nil {
		_ = st.Close()
		return fmt.Errorf("cannot open write-ahead log in %s: %w", s.cfg.DataDir, err)
	}
	now := time.Now().UnixMilli()
	var restoreErr int
	lastLog := t0
	rs, err := st.ReplayStates(now,
		func(user, room, state []byte, lastSeen, expiry int64) error {
			if _, err := s.m.RestoreState(user, room, state, lastSeen, expiry, now); err != nil {
				restoreErr++
			}
			if n := s.replayed.Add(1); n%1024 == 0 && time.Since(lastLog) >= s.replayLogEvery {
				// A 10M-session log takes seconds: say how far it got.
				lastLog = time.Now()
				s.log.Info("replaying the write-ahead log", "replayed", n, "took", lastLog.Sub(t0))
				if s.replayProgress != nil {
					s.replayProgress(n)
				}
			}
			return nil
		},
		func(user, room []byte, lastSeen, expiry int64) {
			s.publish(shardmap.Event{User: string(user), Room: string(room), At: expiry, Reason: shardmap.ReasonTimeout})
		})
	if err != nil {
		_ = st.Close()
		return fmt.Errorf("cannot replay write-ahead log: %w", err)
	}
	if rs.Unclean {
		s.log.Warn("previous run did not shut down cleanly; recovered from the write-ahead log")
	}
	s.log.Info("write-ahead log replayed", "live", rs.Live, "expired_while_down", rs.Expired,
		"restore_errors", restoreErr, "took", time.Since(t0))
	st.Start(s.drainChanges)
	return nil
}

// sweepLoop expires sessions every SweepInterval.
func (s *Server) sweepLoop() {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	var evs []shardmap.Event
	for {
		select {
		case <-s.quit:
			return
		case now := <-t.C:
			evs = s.sweep(now.UnixMilli(), evs)
		}
	}
}

// sweep is one pass of the sweeper at wall time nowMs: it expires the
// sessions due and publishes their timeouts, unless the node holds
// timeouts (overload.go). evs is scratch space, returned for reuse.
func (s *Server) sweep(nowMs int64, evs []shardmap.Event) []shardmap.Event {
	_, mono := s.clk.Now()
	if s.ovl.holding(mono) {
		// Shedding: the heartbeats that would have kept these sessions
		// may be the ones the kernel dropped.
		s.lastSweep.Store(mono)
		return evs
	}
	evs = s.m.Expire(nowMs, evs[:0])
	s.departed.noteLeaves(evs)
	s.lastSweep.Store(mono)
	for i := range evs {
		s.publish(evs[i])
	}
	clear(evs)
	return evs
}

// debounceLoop hands held leaves to the event bus once their --leave-delay
// has passed.
func (s *Server) debounceLoop() {
	if s.cfg.LeaveDelay <= 0 {
		return
	}
	t := time.NewTicker(min(s.cfg.LeaveDelay/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			s.deb.Flush(0, true)
			return
		case now := <-t.C:
			s.deb.Flush(now.UnixMilli(), false)
		}
	}
}

// publish counts an event decided by this node's table and, on a single
// node, hands it to the event pipeline: debounce, then the bus (history and
// streams). In a cluster the events come back from Redis (clusterEvent).
func (s *Server) publish(ev shardmap.Event) {
	switch {
	case ev.Update: // a connection ended; the member stays
	case ev.Join:
		s.met.joins.Inc()
	case ev.Reason == shardmap.ReasonTimeout:
		s.met.leavesTimeout.Inc()
	case ev.Reason == shardmap.ReasonDisconnect:
		s.met.leavesDisconnect.Inc()
	default:
		s.met.leavesLeft.Inc()
	}
	if s.cl != nil {
		return // the event stream carries the cluster-wide events (clusterEvent)
	}
	now := time.Now().UnixMilli()
	s.offerMember(tableEvent(&ev), now)
	if ev.Vacated {
		s.deb.Offer(&events.Event{Type: events.Vacated, Room: ev.Room, At: ev.At}, now)
	}
}

// publishRoom publishes a room event (occupied) on a single node.
func (s *Server) publishRoom(t events.Type, room []byte, at int64) {
	if s.cl != nil {
		return
	}
	s.deb.Offer(&events.Event{Type: t, Room: string(room), At: at, Online: 1}, time.Now().UnixMilli())
}

// eventConns converts a session's connections to the form events carry.
func eventConns(cs []shardmap.Conn) []events.Conn {
	out := make([]events.Conn, len(cs))
	for i := range cs {
		out[i] = events.Conn{Conn: cs[i].ID, State: cs[i].State}
	}
	return out
}

// publishConn publishes a join or update decided by a heartbeat of
// connection conn: conns, for a session with named connections, are its
// connections after the change (update events carry them), and kind says
// what happened to the connection. On a single node the event goes through
// the debounce; in a cluster the writer carries the session to Redis and
// the join or state update comes back from the stream.
func (s *Server) publishConn(t events.Type, user, room, conn []byte, at int64, state []byte, conns []shardmap.Conn, kind events.ConnChange) {
	if t == events.Join {
		s.met.joins.Inc()
	}
	if s.cl != nil {
		return
	}
	ev := &events.Event{Type: t, User: string(user), Room: string(room), At: at}
	if state != nil {
		ev.State = bytes.Clone(state)
	}
	if t == events.Update && conns != nil {
		ev.Conn, ev.ConnChange, ev.Connections = string(conn), kind, eventConns(conns)
	}
	if t == events.Join && len(conn) > 0 {
		ev.Conn, ev.ConnChange = string(conn), kind
	}
	s.offerMember(ev, time.Now().UnixMilli())
}

// tableEvent converts an event of the presence table into a bus event.
func tableEvent(ev *shardmap.Event) *events.Event {
	e := &events.Event{Type: events.Leave, User: ev.User, Room: ev.Room, At: ev.At, State: ev.State}
	switch {
	case ev.Update:
		e.Type, e.Conn, e.ConnChange = events.Update, ev.Conn, events.ConnEnded
		e.Connections = eventConns(ev.Conns)
		e.Reason = reasonName(ev.Reason)
	case ev.Join:
		e.Type = events.Join
	default:
		e.Reason = reasonName(ev.Reason)
	}
	return e
}

// reasonName is the event reason of a table reason.
func reasonName(r shardmap.Reason) string {
	switch r {
	case shardmap.ReasonTimeout:
		return events.ReasonTimeout
	case shardmap.ReasonDisconnect:
		return events.ReasonDisconnect
	}
	return events.ReasonLeft
}

// Alive reports whether the sweeper, which takes every shard lock in
// turn, finished a pass in the last 10 s (or the server has not started):
// a deadlocked table stops it, and the watchdog then lets systemd restart
// the node.
func (s *Server) Alive() bool {
	last := s.lastSweep.Load()
	_, mono := s.clk.Now()
	return last == 0 || mono-last < (10*time.Second+10*s.cfg.SweepInterval).Milliseconds()
}

// Ready reports whether the server takes traffic.
func (s *Server) Ready() bool {
	if s.state.Load() != stateReady {
		return false
	}
	if s.store != nil && s.store.Healthy() != nil {
		return false
	}
	return true
}

// storeState is the write-ahead log's state; StateClosed without one.
func (s *Server) storeState() persist.State {
	if s.store == nil {
		return persist.StateClosed
	}
	return s.store.State()
}

// HTTPAddr is the bound HTTP address (useful with port 0).
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// UDPAddr is the bound UDP address.
func (s *Server) UDPAddr() string {
	if s.udp == nil {
		return ""
	}
	return s.udp.addr
}

// Shutdown stops the server once, in reverse order of Start: fail
// readiness, wait the drain delay, stop intake, stop the sweeper and the
// change pump, drain the change log into the log and the Redis writer one
// last time, commit and close the log, flush the Redis writer, wait for
// goroutines. It logs how long each step took.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.stopping.CompareAndSwap(false, true) {
		return nil
	}
	t0 := time.Now()
	step := func(name string, f func() error) error {
		t := time.Now()
		err := f()
		s.log.Info("shutdown step", "step", name, "took", time.Since(t), "err", err)
		return err
	}
	var errs []error
	s.state.Store(stateDraining)
	if s.cfg.DrainDelay > 0 {
		_ = step("drain delay", func() error {
			select {
			case <-time.After(s.cfg.DrainDelay):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}
	// Leaves held by --leave-delay are decided: they go to the bus (and
	// the webhook queue) now, and later ones pass at once.
	s.deb.Release()
	s.bus.Close()
	errs = append(errs, step("close websockets", func() error { return s.closeWS(ctx) }))
	if s.udp != nil {
		errs = append(errs, step("stop udp", func() error { return s.udp.stop(ctx) }))
	}
	errs = append(errs, step("stop http", func() error { return s.stopHTTP(ctx) }))
	if s.stopPprof != nil {
		errs = append(errs, s.stopPprof(ctx))
	}
	close(s.quit)
	if h := s.hooks.Load(); h != nil {
		_ = step("stop webhooks", func() error { h.Stop(); return nil })
	}
	if s.sweepDone != nil {
		// An expiry after the log's final drain would not be written,
		// and the next start would emit its timeout a second time.
		errs = append(errs, step("stop sweeper", func() error {
			select {
			case <-s.sweepDone:
				return nil
			case <-ctx.Done():
				return fmt.Errorf("cannot stop sweeper: %w", ctx.Err())
			}
		}))
	}
	if s.tracksChanges() {
		errs = append(errs, step("stop change pump", func() error { return s.stopPump(ctx) }))
		if s.store != nil && s.cfg.Persist.RefreshMargin > 0 {
			// The log skipped refreshes (--wal-refresh-margin): the final
			// drain writes every session's current times, so a clean
			// restart restores them exactly.
			s.m.Relog()
		}
		// Every change is now in the log's intake and the Redis writer's.
		_ = step("final drain", func() error { s.drainChanges(); return nil })
	}
	if st := s.storeState(); st != persist.StateOpening && st != persist.StateClosed {
		errs = append(errs, step("close write-ahead log", func() error { return s.store.CloseContext(ctx) }))
	}
	if s.cl != nil {
		errs = append(errs, step("flush and close redis writer", func() error { return s.closeCluster(ctx) }))
	}
	errs = append(errs, step("wait goroutines", func() error { return s.routines.WaitContext(ctx) }))
	s.state.Store(stateStopped)
	err := errors.Join(errs...)
	s.log.Info("presenced stopped", "took", time.Since(t0), "err", err)
	return err
}

// numLoops is the number of UDP event loops to run.
func (s *Server) numLoops() int {
	if s.cfg.UDPLoops > 0 {
		return s.cfg.UDPLoops
	}
	return runtime.GOMAXPROCS(0)
}

func timeFromMs(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
