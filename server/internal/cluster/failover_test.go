package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/redistest"
	"github.com/presenced/presenced/shardmap"
)

// Failover tests: real Redis processes crash, hang and move slots while
// two nodes heartbeat; afterwards both answer for the whole cluster and
// Redis agrees with the truth the test kept.

type sess struct{ user, room string }

// fleet heartbeats sessions through its nodes and keeps the truth: the
// sessions it keeps alive, and those it ended with an explicit leave.
type fleet struct {
	t     *testing.T
	nodes []*testNode
	raw   func() redis.UniversalClient // a fresh client of the current topology
	ttlMs int64

	mu    sync.Mutex
	live  map[sess]int // session -> index of the node it heartbeats through
	gone  map[sess]bool
	beats int

	stop chan struct{}
	done chan struct{}
}

// newFleet starts nodes (TTL 3 s) on addrs and perNode sessions each, in
// 20 rooms, heartbeated every interval.
func newFleet(t *testing.T, addrs string, mod func(*Config), nodes, perNode int, interval time.Duration, raw func() redis.UniversalClient) *fleet {
	t.Helper()
	f := &fleet{t: t, raw: raw, ttlMs: 3000, live: map[sess]int{}, gone: map[sess]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	for i := range nodes {
		f.nodes = append(f.nodes, startNode(t, addrs, mod))
		for j := range perNode {
			f.live[sess{fmt.Sprintf("n%d-u%04d", i, j), fmt.Sprintf("room-%02d", j%20)}] = i
		}
	}
	go f.run(interval)
	t.Cleanup(f.halt)
	return f
}

func (f *fleet) halt() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
		<-f.done
	}
}

// run touches every live session once per interval, spread over ticks.
func (f *fleet) run(interval time.Duration) {
	defer close(f.done)
	const tick = 20 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	parts := int(interval / tick)
	for k := 0; ; k++ {
		f.mu.Lock()
		now := time.Now().UnixMilli()
		for s, i := range f.live {
			if int(fnv64a(s.user+s.room)%uint64(parts)) != k%parts {
				continue
			}
			if _, err := f.nodes[i].m.Touch([]byte(s.user), []byte(s.room), now, f.ttlMs); err != nil {
				f.t.Error(err)
			}
			f.beats++
		}
		f.mu.Unlock()
		select {
		case <-f.stop:
			return
		case <-tk.C:
		}
	}
}

// join adds a session heartbeated through node i; leave ends one with an
// explicit leave through the node that holds it.
func (f *fleet) join(i int, s sess) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.nodes[i].m.Touch([]byte(s.user), []byte(s.room), time.Now().UnixMilli(), f.ttlMs); err != nil {
		f.t.Error(err)
	}
	f.live[s] = i
	delete(f.gone, s)
}

func (f *fleet) leave(s sess) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.live[s]
	if !ok {
		return
	}
	f.nodes[i].m.Leave([]byte(s.user), []byte(s.room), time.Now().UnixMilli())
	delete(f.live, s)
	f.gone[s] = true
}

func (f *fleet) whole() bool {
	for _, tn := range f.nodes {
		if !tn.n.Up() {
			return false
		}
	}
	return true
}

// check compares what every node answers, and what Redis holds, with the
// truth: every live session present, no ended one, every room's count
// equal to its member list and that list equal to the truth.
func (f *fleet) check() error {
	f.mu.Lock()
	live := make(map[sess]bool, len(f.live))
	for s := range f.live {
		live[s] = true
	}
	gone := make([]sess, 0, len(f.gone))
	for s := range f.gone {
		gone = append(gone, s)
	}
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	byUser := map[string][]string{}
	byRoom := map[string][]string{}
	for s := range live {
		byUser[s.user] = append(byUser[s.user], s.room)
		byRoom[s.room] = append(byRoom[s.room], s.user)
	}
	for _, s := range gone {
		if _, ok := byUser[s.user]; !ok {
			byUser[s.user] = nil
		}
	}
	users := make([]string, 0, len(byUser))
	for u := range byUser {
		users = append(users, u)
	}
	sort.Strings(users)
	for i, tn := range f.nodes {
		if !tn.n.Up() {
			return fmt.Errorf("node %d answers partial", i)
		}
		sts, err := tn.n.Users(ctx, users, time.Now().UnixMilli())
		if err != nil {
			return fmt.Errorf("node %d: users: %w", i, err)
		}
		for j, u := range users {
			var got []string
			for _, r := range sts[j].Rooms {
				got = append(got, r.Room)
			}
			want := slices.Clone(byUser[u])
			sort.Strings(want)
			if !slices.Equal(got, want) {
				return fmt.Errorf("node %d: user %s in rooms %v, want %v", i, u, got, want)
			}
		}
		st, err := tn.n.ClusterStats(ctx)
		if err != nil {
			return fmt.Errorf("node %d: stats: %w", i, err)
		}
		if int(st.Sessions) != len(live) || int(st.OnlineUsers) != len(byUser)-countOnlyGone(byUser) || int(st.Rooms) != len(byRoom) {
			return fmt.Errorf("node %d: stats %+v, want %d sessions of %d users in %d rooms", i, st, len(live), len(byUser)-countOnlyGone(byUser), len(byRoom))
		}
		for room, want := range byRoom {
			c, err := tn.n.RoomOnline(ctx, room)
			if err != nil || c != len(want) {
				return fmt.Errorf("node %d: room %s count %d, want %d (%v)", i, room, c, len(want), err)
			}
		}
	}
	// Redis itself: every room bucket's counts equal the member lists, and
	// no member without a session (ghost) or session without membership.
	rc := f.raw()
	defer rc.Close()
	k := newKeys("pd")
	for b := range Buckets {
		top, err := rc.ZRangeWithScores(ctx, k.top(b), 0, -1).Result()
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		for _, z := range top {
			room := z.Member.(string)
			ms, err := rc.ZRange(ctx, k.members(room), 0, -1).Result()
			if err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			if int(z.Score) != len(ms) {
				return fmt.Errorf("redis: room %s counts %v, holds %d members", room, z.Score, len(ms))
			}
			want := slices.Clone(byRoom[room])
			sort.Strings(want)
			if !slices.Equal(ms, want) {
				return fmt.Errorf("redis: room %s members %d (%s), want %d", room, len(ms), diff(ms, want), len(want))
			}
		}
		if len(top) == 0 {
			continue
		}
	}
	return nil
}

func countOnlyGone(byUser map[string][]string) int {
	n := 0
	for _, rs := range byUser {
		if len(rs) == 0 {
			n++
		}
	}
	return n
}

func diff(got, want []string) string {
	g := map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	w := map[string]bool{}
	var out []string
	for _, s := range want {
		w[s] = true
		if !g[s] {
			out = append(out, "missing "+s)
		}
	}
	for _, s := range got {
		if !w[s] {
			out = append(out, "ghost "+s)
		}
	}
	if len(out) > 4 {
		out = append(out[:4], "...")
	}
	return strings.Join(out, ", ")
}

// converge waits (bounded) until check passes.
func (f *fleet) converge(d time.Duration, what string) {
	f.t.Helper()
	testkit.EventuallyErr(f.t, d, what+": views converged", f.check)
}

// waitWhole returns when every node answers for the whole cluster again.
func (f *fleet) waitWhole(d time.Duration, what string) time.Time {
	f.t.Helper()
	testkit.EventuallyErr(f.t, d, what+": every node whole", func() error {
		if f.whole() {
			return nil
		}
		var st []string
		for _, tn := range f.nodes {
			s := tn.n.Stats()
			st = append(st, fmt.Sprintf("up=%v errors=%d reasserts=%d per-master=%v", s.Up, s.Errors, s.Reasserts, s.MasterErrors))
		}
		return fmt.Errorf("nodes still partial: %s", strings.Join(st, "; "))
	})
	return time.Now()
}

// waitPartial returns once some node has noticed the fault.
func (f *fleet) waitPartial(d time.Duration, what string) {
	f.t.Helper()
	testkit.Eventually(f.t, d, what+": a node noticing the fault", func() bool { return !f.whole() })
}

func clusterRaw(rc *redistest.Cluster, t *testing.T) func() redis.UniversalClient {
	return func() redis.UniversalClient {
		var addrs []string
		// Not a hung (paused) node: a client that loads its slot map from
		// it waits out its whole read timeout, and the check its context.
		for _, s := range rc.Nodes {
			if s.Answering() {
				addrs = append(addrs, s.Addr())
			}
		}
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	}
}

// logCount counts log records whose message contains a string.
type logCount struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05.000") + " " + r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCount) WithGroup(string) slog.Handler      { return l }
func (l *logCount) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}
func (l *logCount) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.msgs, "\n")
}

const wholeAgain = "redis answers again: answering for the whole cluster"

// TestFailoverClusterMasterKill: a master of a 3+3 Redis Cluster is killed
// (-9) under load; its replica is promoted; both nodes answer for the
// whole cluster again, each saying so once; the killed master comes back
// as a replica and nothing changes.
func TestFailoverClusterMasterKill(t *testing.T) {
	rc := redistest.StartClusterReplicas(t, 3, 1)
	logs := &logCount{}
	f := newFleet(t, rc.MasterAddrs(t), func(c *Config) { c.Logger = slog.New(logs) }, 2, 500, time.Second, clusterRaw(rc, t))
	f.converge(20*time.Second, "before the fault")
	before := logs.count(wholeAgain)
	victim := rc.Masters(t)[0]
	victim.Kill()
	f.waitPartial(10*time.Second, "master killed")
	okAt := rc.WaitOK(t, 30*time.Second)
	wholeAt := f.waitWhole(20*time.Second, "after the failover")
	t.Logf("Redis Cluster master kill -9: cluster_state:ok to whole answers: %v", wholeAt.Sub(okAt).Round(time.Millisecond))
	f.converge(15*time.Second, "after the failover")
	if got := logs.count(wholeAgain) - before; got != len(f.nodes) {
		t.Errorf("%d %q lines for %d nodes, want one each:\n%s", got, wholeAgain, len(f.nodes), logs)
	}
	victim.StartAgain()
	testkit.Eventually(t, 30*time.Second, "the old master to rejoin as a replica", func() bool { return victim.Role() == "slave" })
	f.converge(15*time.Second, "after the old master rejoined")
	for i, tn := range f.nodes {
		st := tn.n.Stats()
		if st.Reasserts < 2 || len(st.MasterErrors) == 0 || st.Partial <= 0 {
			t.Errorf("node %d: stats %+v: want re-asserts, per-master errors and partial time", i, st)
		}
	}
}

func standaloneRaw(r *redistest.Server) func() redis.UniversalClient {
	return func() redis.UniversalClient { return r.Client() }
}

// TestRoomSideRepairedAfterFault: the room-side pipeline fails
// after the user-side scripts ran, for joins and for leaves; once it works
// again the room view converges to the user view.
func TestRoomSideRepairedAfterFault(t *testing.T) {
	r := redistest.Start(t)
	var mu sync.Mutex
	failing := false
	mod := func(c *Config) {}
	f := newFleet(t, r.Addr(), mod, 2, 0, time.Second, standaloneRaw(r))
	for _, tn := range f.nodes {
		tn.n.testBeforeEmit = func() error {
			mu.Lock()
			defer mu.Unlock()
			if failing {
				return errors.New("injected fault between the user and the room pipelines")
			}
			return nil
		}
	}
	for i := range 40 {
		f.join(i%2, sess{fmt.Sprintf("u%02d", i), fmt.Sprintf("r%d", i%4)})
	}
	f.converge(10*time.Second, "before the fault")
	mu.Lock()
	failing = true
	mu.Unlock()
	for i := 40; i < 80; i++ {
		f.join(i%2, sess{fmt.Sprintf("u%02d", i), fmt.Sprintf("r%d", i%4)})
	}
	for i := range 10 {
		f.leave(sess{fmt.Sprintf("u%02d", i), fmt.Sprintf("r%d", i%4)})
	}
	f.waitPartial(5*time.Second, "room pipeline failing")
	// While it fails the user side moves on and the room side does not.
	testkit.Eventually(t, 10*time.Second, "joins on the user side", func() bool {
		c := r.Client()
		defer c.Close()
		n, _ := c.Exists(context.Background(), newKeys("pd").user("u79")).Result()
		return n == 1
	})
	mu.Lock()
	failing = false
	mu.Unlock()
	f.converge(10*time.Second, "after the fault")
}

// TestScriptFlushOneMaster: SCRIPT FLUSH on one master of a
// Redis Cluster makes its EVALSHAs fail once; nothing runs twice, no join
// or leave is lost, and the views converge.
func TestScriptFlushOneMaster(t *testing.T) {
	rc := redistest.StartCluster(t)
	f := newFleet(t, rc.Addrs(), nil, 2, 0, time.Second, clusterRaw(rc, t))
	for i := range 200 {
		f.join(i%2, sess{fmt.Sprintf("u%03d", i), fmt.Sprintf("r%d", i%5)})
	}
	f.converge(10*time.Second, "before the flush")
	c := rc.Nodes[1].Client()
	if err := c.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for i := 200; i < 400; i++ {
		f.join(i%2, sess{fmt.Sprintf("u%03d", i), fmt.Sprintf("r%d", i%5)})
	}
	for i := range 50 {
		f.leave(sess{fmt.Sprintf("u%03d", i), fmt.Sprintf("r%d", i%5)})
	}
	f.converge(15*time.Second, "after the flush")
	// Every join and leave reached every node's event stream exactly once:
	// a re-run pipeline would double the events of the other masters, a
	// lost one would miss some.
	for i, tn := range f.nodes {
		testkit.EventuallyErr(t, 10*time.Second, "every join and leave on the stream", func() error {
			if j, l := tn.count(true, 0), tn.count(false, shardmap.ReasonLeft); j < 400 || l < 50 {
				return fmt.Errorf("node %d saw %d of 400 joins and %d of 50 leaves (redis errors %d, dropped %d; missing joins: %v)", i, j, l, tn.n.Stats().Errors, tn.n.Stats().Dropped, tn.missingJoins(400))
			}
			return nil
		})
		tn.mu.Lock()
		seen := map[string]int{}
		for _, e := range tn.evs {
			k := "join " + e.User
			if !e.Join {
				k = "leave " + e.User
			}
			seen[k]++
		}
		tn.mu.Unlock()
		for k, c := range seen {
			if c != 1 {
				t.Errorf("node %d: %s seen %d times", i, k, c)
			}
		}
	}
}

// missingJoins lists the first users u000..u<n-1> whose join tn did not see.
func (tn *testNode) missingJoins(n int) []string {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	seen := map[string]bool{}
	for _, e := range tn.evs {
		if e.Join {
			seen[e.User] = true
		}
	}
	var miss []string
	for i := range n {
		if u := fmt.Sprintf("u%03d", i); !seen[u] && len(miss) < 20 {
			miss = append(miss, u)
		}
	}
	return miss
}

// TestFailoverSentinel: Sentinel (1 master, 2 replicas, 3 sentinels)
// promotes a replica after the master is killed; both nodes answer for the
// whole cluster again and Redis agrees with the truth.
func TestFailoverSentinel(t *testing.T) {
	g := redistest.StartSentinelGroup(t)
	raw := func() redis.UniversalClient {
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "mymaster", SentinelAddrs: strings.Split(g.Addrs(), ",")})
	}
	f := newFleet(t, g.Addrs(), func(c *Config) { c.MasterName = "mymaster" }, 2, 500, time.Second, raw)
	f.converge(20*time.Second, "before the fault")
	old := g.CurrentMaster(t)
	old.Kill()
	f.waitPartial(10*time.Second, "master killed")
	_, okAt := g.WaitPromoted(t, old, 30*time.Second)
	wholeAt := f.waitWhole(20*time.Second, "after the promotion")
	t.Logf("Sentinel master kill -9: promotion seen to whole answers: %v", wholeAt.Sub(okAt).Round(time.Millisecond))
	f.converge(15*time.Second, "after the promotion")
}

// TestFailoverHungMaster: a master of a 3+3 Redis Cluster hangs (SIGSTOP)
// for 10 s under load, long enough to be failed over while hung, then
// continues (and finds itself a replica). Both nodes answer for the whole
// cluster again and the views converge.
func TestFailoverHungMaster(t *testing.T) {
	rc := redistest.StartClusterReplicas(t, 3, 1)
	logs := &logCount{}
	f := newFleet(t, rc.MasterAddrs(t), func(c *Config) { c.Logger = slog.New(logs) }, 2, 500, time.Second, clusterRaw(rc, t))
	f.converge(20*time.Second, "before the hang")
	victim := rc.Masters(t)[1]
	victim.Pause()
	hungAt := time.Now()
	f.waitPartial(10*time.Second, "master hung")
	okAt := rc.WaitOK(t, 30*time.Second)
	wholeAt := f.waitWhole(20*time.Second, "after the failover of the hung master")
	t.Logf("Redis Cluster master SIGSTOP: cluster_state:ok to whole answers: %v", wholeAt.Sub(okAt).Round(time.Millisecond))
	if logs.count(wholeAgain) != len(f.nodes) || wholeAt.Sub(okAt) > 3*time.Second {
		t.Logf("hung at %s, cluster ok at %s:\n%s", hungAt.Format("15:04:05.000"), okAt.Format("15:04:05.000"), logs)
	}
	if logs.count(wholeAgain) != len(f.nodes) {
		t.Errorf("want one %q line per node", wholeAgain)
	}
	f.converge(15*time.Second, "while the old master hangs")
	time.Sleep(time.Until(hungAt.Add(10 * time.Second))) // a real clock: the master hangs for 10 s
	victim.Resume()
	testkit.Eventually(t, 30*time.Second, "the old master to continue as a replica", func() bool { return victim.Role() == "slave" })
	f.converge(15*time.Second, "after the old master continued")
}

// TestFailoverLiveReshard: redis-cli --cluster reshard moves 2,000
// slots (keys of busy buckets with them) while heartbeats, joins and
// leaves flow; MOVED and ASK are followed and the views converge.
func TestFailoverLiveReshard(t *testing.T) {
	rc := redistest.StartCluster(t)
	f := newFleet(t, rc.Addrs(), nil, 2, 500, 500*time.Millisecond, clusterRaw(rc, t))
	f.converge(20*time.Second, "before the reshard")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // joins and leaves while slots move
		defer close(done)
		for i := 0; ; i++ {
			s := sess{fmt.Sprintf("mover-%04d", i), fmt.Sprintf("room-%02d", i%20)}
			f.join(i%2, s)
			if i%3 == 0 {
				f.leave(s)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	before := make([]Stats, len(f.nodes))
	for i, tn := range f.nodes {
		before[i] = tn.n.Stats()
	}
	rc.Reshard(t, rc.Nodes[0], rc.Nodes[1], 2000)
	doneAt := time.Now()
	close(stop)
	<-done
	wholeAt := f.waitWhole(20*time.Second, "after the reshard")
	t.Logf("live reshard of 2000 slots: end of reshard to whole answers: %v", max(0, wholeAt.Sub(doneAt)).Round(time.Millisecond))
	f.converge(15*time.Second, "after the reshard")
	for i, tn := range f.nodes {
		st := tn.n.Stats()
		t.Logf("node %d during the reshard: %d failed round trips, %d re-asserts", i, st.Errors-before[i].Errors, st.Reasserts-before[i].Reasserts)
	}
}

// TestFailoverChaos: two nodes, about 2,000 heartbeats/s, joins and
// leaves, while masters of a 3+3 Redis Cluster are killed and restarted at
// random for about 30 s; at the end both nodes' answers equal the truth.
func TestFailoverChaos(t *testing.T) {
	rc := redistest.StartClusterReplicas(t, 3, 1)
	f := newFleet(t, rc.MasterAddrs(t), nil, 2, 500, 500*time.Millisecond, clusterRaw(rc, t))
	f.converge(20*time.Second, "before the chaos")
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	end := time.Now().Add(30 * time.Second)
	kills := 0
	for k := 0; time.Now().Before(end); k++ {
		// Between faults: joins and leaves through both nodes.
		for j := range 20 {
			s := sess{fmt.Sprintf("chaos-%d-%d", k, j), fmt.Sprintf("room-%02d", rng.IntN(20))}
			f.join(rng.IntN(2), s)
			if rng.IntN(3) == 0 {
				f.leave(s)
			}
		}
		var dead []*redistest.Server
		for _, s := range rc.Nodes {
			if !s.Alive() {
				dead = append(dead, s)
			}
		}
		switch {
		case len(dead) > 0 && rng.IntN(2) == 0:
			dead[0].StartAgain()
		case len(dead) == 0 && rc.ReplicasInSync() == 3:
			// Kill a master only while every master has a replica in sync.
			rc.WaitOK(t, 30*time.Second)
			ms := rc.Masters(t)
			ms[rng.IntN(len(ms))].Kill()
			kills++
		}
		time.Sleep(time.Duration(1500+rng.IntN(2000)) * time.Millisecond) // paces the chaos: kills 1.5-3.5 s apart
	}
	for _, s := range rc.Nodes {
		if !s.Alive() {
			s.StartAgain()
		}
	}
	okAt := rc.WaitOK(t, 30*time.Second)
	wholeAt := f.waitWhole(20*time.Second, "after the chaos")
	f.mu.Lock()
	beats := f.beats
	f.mu.Unlock()
	t.Logf("chaos: %d master kills, %d heartbeats; cluster_state:ok to whole answers: %v", kills, beats, max(0, wholeAt.Sub(okAt)).Round(time.Millisecond))
	f.converge(20*time.Second, "after the chaos")
}

// startBare starts a node on addrs without waiting for Redis.
func startBare(t *testing.T, addrs string, logs *logCount) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addrs, cfg.NodeID = addrs, "bare"
	cfg.HealthInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(logs)
	n, err := New(cfg, func(func(user, room, state []byte, lastSeen, expiry int64) bool) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Kill() })
	return n
}

// TestRedisProblemsLogged: nothing listening, or a wrong
// password, is logged once at error level with the reason, not once per
// failed health check; a change of state is logged again.
func TestRedisProblemsLogged(t *testing.T) {
	t.Run("nothing listening", func(t *testing.T) {
		logs := &logCount{}
		n := startBare(t, fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)), logs)
		testkit.Eventually(t, 10*time.Second, "10 failed health checks", func() bool { return n.Stats().Errors >= 10 })
		if got := logs.count("ERROR cannot use redis"); got != 1 || logs.count("reason=unreachable") != 1 || logs.count("") != logs.count("DEBUG")+1 {
			t.Errorf("want exactly one error line saying redis is unreachable, got:\n%s", logs)
		}
		if n.Up() || n.Ready() {
			t.Error("node up without redis")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		r := redistest.Start(t)
		c := r.Client()
		defer c.Close()
		if err := c.ConfigSet(context.Background(), "requirepass", "right").Err(); err != nil {
			t.Fatal(err)
		}
		logs := &logCount{}
		n := startBare(t, "redis://:wrong@"+r.Addr(), logs)
		testkit.Eventually(t, 10*time.Second, "10 failed health checks", func() bool { return n.Stats().Errors >= 10 })
		if logs.count("ERROR cannot use redis") != 1 || logs.count("reason=authentication") != 1 {
			t.Errorf("want exactly one error line about authentication, got:\n%s", logs)
		}
		// The operator fixes the password: one line says the node is whole.
		rc := redis.NewClient(&redis.Options{Addr: r.Addr(), Password: "right"})
		defer rc.Close()
		if err := rc.ConfigSet(context.Background(), "requirepass", "wrong").Err(); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 10*time.Second, "the node to connect", n.Up)
		if logs.count("INFO redis connected") != 1 {
			t.Errorf("want one line when connected, got:\n%s", logs)
		}
	})
}

// TestWriteErrorsMakePartial: Redis refuses writes (maxmemory
// with noeviction); the node answers partial until a re-assert succeeds,
// then Redis holds every session.
func TestWriteErrorsMakePartial(t *testing.T) {
	r := redistest.Start(t)
	f := newFleet(t, r.Addr(), nil, 2, 200, time.Second, standaloneRaw(r))
	f.converge(10*time.Second, "before the limit")
	c := r.Client()
	defer c.Close()
	ctx := context.Background()
	if err := c.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		f.join(i%2, sess{fmt.Sprintf("oom-%02d", i), "room-oom"})
	}
	f.waitPartial(10*time.Second, "writes refused")
	// Every node's writes fail over and over (each re-assert is refused
	// too): none may answer whole meanwhile.
	errs := make([]uint64, len(f.nodes))
	for i, tn := range f.nodes {
		errs[i] = tn.n.Stats().Errors
	}
	for i, tn := range f.nodes {
		testkit.Eventually(t, 10*time.Second, "three more failed writes", func() bool { return tn.n.Stats().Errors >= errs[i]+3 })
		if tn.n.Up() {
			t.Errorf("node %d answers whole while redis refuses its writes", i)
		}
	}
	if err := c.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	f.waitWhole(10*time.Second, "writes accepted again")
	f.converge(10*time.Second, "after the limit")
}

// TestSessionHashSeeded: the writer's session hash depends on
// a per-process seed, so clients cannot craft colliding ids offline.
func TestSessionHashSeeded(t *testing.T) {
	old := sessSeed
	defer func() { sessSeed = old }()
	a := sessHash([]byte("user"), []byte("room"))
	sessSeed = maphash.MakeSeed()
	if b := sessHash([]byte("user"), []byte("room")); a == b {
		t.Fatalf("session hash %x unchanged under another seed", a)
	}
	if sessHash([]byte("ab"), []byte("c")) == sessHash([]byte("a"), []byte("bc")) {
		t.Fatal("user and room boundary not hashed")
	}
}
