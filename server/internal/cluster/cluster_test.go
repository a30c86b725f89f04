package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/redistest"
	"github.com/presenced/presenced/shardmap"
)

func TestDecodeEntry(t *testing.T) {
	ev, ok := decodeEntry(redis.XMessage{ID: "17-3", Values: map[string]any{
		"type": "leave", "user": "ü ser", "room": "x\ty", "at": "1700000000123", "reason": "timeout", "state": "", "node": "n"}})
	if !ok || ev.ID != (events.ID{Ms: 17, Seq: 3}) || ev.Type != events.Leave || ev.User != "ü ser" || ev.Room != "x\ty" ||
		ev.At != 1700000000123 || ev.Reason != "timeout" || ev.State != nil {
		t.Fatalf("decoded %+v %v", ev, ok)
	}
	for _, bad := range []redis.XMessage{{ID: "x", Values: map[string]any{"type": "join"}}, {ID: "1-1", Values: map[string]any{"type": "nope"}}} {
		if _, ok := decodeEntry(bad); ok {
			t.Errorf("decodeEntry(%+v) accepted", bad)
		}
	}
}

func TestCursor(t *testing.T) {
	for _, u := range []string{"a", "user/with slash", "ü"} {
		got, err := DecodeCursor(EncodeCursor(u))
		if err != nil || got != u {
			t.Errorf("cursor of %q: %q %v", u, got, err)
		}
	}
	for _, bad := range []string{"x", "c", "c!!", "12"} {
		if _, err := DecodeCursor(bad); err == nil {
			t.Errorf("DecodeCursor(%q) accepted", bad)
		}
	}
}

func TestConfigAddresses(t *testing.T) {
	f := func(addrs, master string, wantN int, wantErr bool) {
		t.Helper()
		c := DefaultConfig()
		c.Addrs, c.MasterName, c.NodeID = addrs, master, "n"
		o, err := c.options()
		if (err != nil) != wantErr {
			t.Fatalf("%q: err %v", addrs, err)
		}
		if err == nil && len(o.Addrs) != wantN {
			t.Fatalf("%q: %d addrs", addrs, len(o.Addrs))
		}
	}
	f("127.0.0.1:6379", "", 1, false)
	f("a:1, b:2,c:3", "", 3, false)
	f("redis://:pw@host:6380/2", "", 1, false)
	f("rediss://host:6380", "", 1, false)
	f("s1:26379,s2:26379", "mymaster", 2, false)
	f("nohostport", "", 0, true)
	f(",", "", 0, true)
}

// testNode runs a Node over a real presence table.
type testNode struct {
	n   *Node
	m   *shardmap.Map
	mu  sync.Mutex
	evs []shardmap.Event
	ups []string // update events: user "/" state
	// paused holds the server's pump: changes stay in the table's change
	// log, as they do between two drains.
	paused atomic.Bool
}

func startNode(t *testing.T, addrs string, mod func(*Config)) *testNode {
	t.Helper()
	mc := shardmap.DefaultConfig()
	mc.TrackChanges = true
	m, err := shardmap.New(mc)
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{m: m}
	cfg := DefaultConfig()
	cfg.Addrs = addrs
	cfg.NodeID = fmt.Sprintf("test-%p", tn)
	cfg.TTL = 3 * time.Second
	cfg.FlushInterval = 20 * time.Millisecond
	cfg.ReapInterval = 100 * time.Millisecond
	cfg.HealthInterval = 200 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg, m.RangeState, testSink{tn})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	tn.n = n
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the server's pump
		defer close(done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if !tn.paused.Load() {
					m.Drain(n.Offer)
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = n.Close(ctx)
	})
	testkit.Eventually(t, 5*time.Second, "the node to connect", n.Ready)
	return tn
}

// testSink records the stream's events as the table's events.
type testSink struct{ tn *testNode }

func (testSink) SetFloor(events.ID) {}
func (testSink) Rebase(events.ID)   {}
func (s testSink) Append(ev *events.Event) bool {
	if ev.Type == events.Update {
		s.tn.mu.Lock()
		s.tn.ups = append(s.tn.ups, ev.User+"/"+string(ev.State))
		s.tn.mu.Unlock()
		return true
	}
	if ev.Type != events.Join && ev.Type != events.Leave {
		return true // room events (occupied, vacated): not counted here
	}
	e := shardmap.Event{User: ev.User, Room: ev.Room, At: ev.At, Join: ev.Type == events.Join, Reason: shardmap.ReasonLeft}
	if ev.Reason == events.ReasonTimeout {
		e.Reason = shardmap.ReasonTimeout
	}
	s.tn.mu.Lock()
	s.tn.evs = append(s.tn.evs, e)
	s.tn.mu.Unlock()
	return true
}

func (tn *testNode) count(join bool, reason shardmap.Reason) int {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	c := 0
	for _, e := range tn.evs {
		if e.Join == join && (join || e.Reason == reason) {
			c++
		}
	}
	return c
}

// TestRedisClusterLayout runs joins, queries, paging and reaping on a
// three-master Redis Cluster: no command may cross slots, and every
// bucket's keys land wherever the cluster puts them.
func TestRedisClusterLayout(t *testing.T) {
	rc := redistest.StartCluster(t)
	a := startNode(t, rc.Addrs(), nil)
	b := startNode(t, rc.Addrs(), nil)
	now := time.Now().UnixMilli()
	const users = 300
	for i := range users {
		if _, err := a.m.Touch([]byte(fmt.Sprintf("u%03d", i)), []byte(fmt.Sprintf("r%d", i%7)), now, 3000); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	// Generous: CI runs this beside other packages' tests under -race. If a
	// write failed (the writer drops it and re-asserts without events), the
	// error count says so.
	testkit.EventuallyErr(t, 15*time.Second, "B to see every join", func() error {
		if n := b.count(true, 0); n != users {
			return fmt.Errorf("B saw %d of %d joins (redis errors: A %d, B %d; dropped: A %d)",
				n, users, a.n.Stats().Errors, b.n.Stats().Errors, a.n.Stats().Dropped)
		}
		return nil
	})
	st, err := b.n.ClusterStats(ctx)
	if err != nil || st.Sessions != users || st.OnlineUsers != users || st.Rooms != 7 {
		t.Fatalf("stats %+v %v", st, err)
	}
	top, err := b.n.TopRooms(ctx, 3)
	if err != nil || len(top) != 3 || top[0].Online != 43 || top[0].Room != "r0" {
		t.Fatalf("top %+v %v", top, err)
	}
	// Page r0 (43 members) by 10: every member exactly once.
	seen := map[string]int{}
	after := ""
	for range 10 {
		ms, next, err := b.n.Members(ctx, "r0", after, 10, time.Now().UnixMilli())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			seen[m.User]++
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(seen) != 43 {
		t.Fatalf("paged %d members of r0, want 43", len(seen))
	}
	for u, c := range seen {
		if c != 1 {
			t.Fatalf("%s paged %d times", u, c)
		}
	}
	us, err := b.n.Users(ctx, []string{"u007", "nobody"}, time.Now().UnixMilli())
	if err != nil || !us[0].Online || len(us[0].Rooms) != 1 || us[0].Rooms[0].Room != "r0" || us[1].Online {
		t.Fatalf("users %+v %v", us, err)
	}
	// Nobody heartbeats again: both nodes reap, each session times out once.
	testkit.Eventually(t, 15*time.Second, "300 timeouts", func() bool { return a.count(false, shardmap.ReasonTimeout) == users })
	st, err = b.n.ClusterStats(ctx)
	if err != nil || st != (shardmap.Stats{}) {
		t.Fatalf("stats after expiry %+v %v", st, err)
	}
	// A marker join after the expiries: a second timeout of any session,
	// written before it, reaches both nodes before it.
	if _, err := a.m.Touch([]byte("marker"), []byte("marker"), time.Now().UnixMilli(), 60_000); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		testkit.Eventually(t, 10*time.Second, "the marker's join", func() bool { return n.count(true, 0) == users+1 })
	}
	for i, n := range []*testNode{a, b} {
		if got := n.count(false, shardmap.ReasonTimeout); got != users {
			t.Errorf("node %d: %d timeouts, want %d", i, got, users)
		}
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(rc.Addrs(), ",")})
	defer c.Close()
	msgs, err := c.XRange(ctx, "pd:events", "-", "+").Result()
	members := 0
	for _, m := range msgs {
		if typ := m.Values["type"]; typ == "join" || typ == "leave" {
			members++
		}
	}
	if err != nil || members != 2*users+1 {
		t.Fatalf("stream has %d join and leave entries, want %d (and the marker's join): %v", members, 2*users, err)
	}
}

// joinsOf counts the join events of user.
func (tn *testNode) joinsOf(user string) int {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	c := 0
	for _, e := range tn.evs {
		if e.Join && e.User == user {
			c++
		}
	}
	return c
}

// touch heartbeats user's session in room "r" for a minute, setting its
// state when one is given.
func (tn *testNode) touch(t *testing.T, user string, state ...string) {
	t.Helper()
	var op shardmap.StateOp
	if len(state) > 0 {
		op = shardmap.StateOp{Set: true, State: []byte(state[0])}
	}
	if _, err := tn.m.TouchState([]byte(user), []byte("r"), time.Now().UnixMilli(), 60_000, op); err != nil {
		t.Fatal(err)
	}
}

// join starts user's session in "r" and waits for its join event: seen
// after events decided before it, it also shows nothing else is on its way.
func (tn *testNode) join(t *testing.T, user string) {
	t.Helper()
	tn.touch(t, user)
	testkit.Eventually(t, 10*time.Second, user+"'s join", func() bool { return tn.joinsOf(user) == 1 })
}

// updates returns the update events seen so far, as user "/" state.
func (tn *testNode) updates() []string {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return slices.Clone(tn.ups)
}

// waitReassert waits until a re-assert after the first asserts has made
// the node whole again.
func (tn *testNode) waitReassert(t *testing.T, asserts uint64) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, "the re-assert", func() bool { return tn.n.Stats().Reasserts > asserts && tn.n.Up() })
}

// TestReassertAnnouncesChangesInFlight: the table runs ahead of the
// writer, so a fault's re-assert finds joins and state changes that are
// still in the change log. They are announced once all the same (the
// re-assert once wrote them silently, and their records then read as
// refreshes: joins lost whenever a fault and a join met).
func TestReassertAnnouncesChangesInFlight(t *testing.T) {
	r := redistest.Start(t)
	tn := startNode(t, r.Addr(), func(c *Config) { c.TTL = time.Minute })
	tn.join(t, "u1")

	tn.paused.Store(true) // what follows stays in the change log
	tn.touch(t, "u1", `"away"`)
	tn.touch(t, "u2")
	tn.touch(t, "u3")
	asserts := tn.n.Stats().Reasserts
	tn.n.markDown(errors.New("test: fault"))
	tn.waitReassert(t, asserts)
	tn.paused.Store(false)

	testkit.EventuallyErr(t, 5*time.Second, "the joins and the update", func() error {
		if ups := tn.updates(); tn.joinsOf("u2") == 0 || tn.joinsOf("u3") == 0 || len(ups) == 0 {
			return fmt.Errorf("joins u2 %d, u3 %d; updates %v", tn.joinsOf("u2"), tn.joinsOf("u3"), ups)
		}
		return nil
	})
	tn.join(t, "u4")
	if j2, j3, ups := tn.joinsOf("u2"), tn.joinsOf("u3"), tn.updates(); j2 != 1 || j3 != 1 || len(ups) != 1 || ups[0] != `u1/"away"` {
		t.Fatalf("joins u2 %d, u3 %d (want 1 each); updates %v (want one of u1)", j2, j3, ups)
	}
}

// TestRetriedStateChangeKeepsItsUpdate: a state change whose TOUCH fails
// (NOSCRIPT after a SCRIPT FLUSH) is sent again once Redis answers, and
// still emits its update event, once.
func TestRetriedStateChangeKeepsItsUpdate(t *testing.T) {
	r := redistest.Start(t)
	tn := startNode(t, r.Addr(), func(c *Config) { c.TTL = time.Minute })
	tn.join(t, "u1")
	c := r.Client()
	defer c.Close()
	if err := c.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	errs := tn.n.Stats().Errors
	tn.touch(t, "u1", `"away"`)
	testkit.Eventually(t, 5*time.Second, "the failed touch", func() bool { return tn.n.Stats().Errors > errs })
	testkit.Eventually(t, 10*time.Second, "the node whole again", tn.n.Up)
	tn.join(t, "u9")
	if ups := tn.updates(); len(ups) != 1 || ups[0] != `u1/"away"` {
		t.Fatalf("updates %v, want one of u1 to \"away\"", ups)
	}
}

// TestReassertStateChangeAfterRedisLostIt: Redis comes back empty while a
// known session's state change is on its way; the re-assert writes the
// session back with its new state and one update event, not a second join.
func TestReassertStateChangeAfterRedisLostIt(t *testing.T) {
	r := redistest.Start(t)
	tn := startNode(t, r.Addr(), func(c *Config) { c.TTL = time.Minute })
	tn.join(t, "u1")
	tn.paused.Store(true)
	tn.touch(t, "u1", `"away"`)
	asserts := tn.n.Stats().Reasserts
	r.Restart() // empty: no persistence
	tn.waitReassert(t, asserts)
	tn.paused.Store(false)
	tn.join(t, "u9")
	if j, ups := tn.joinsOf("u1"), tn.updates(); j != 1 || len(ups) != 1 || ups[0] != `u1/"away"` {
		t.Fatalf("u1: %d joins (want 1), updates %v (want one to \"away\")", j, ups)
	}
	c := r.Client()
	defer c.Close()
	v, err := c.HGet(context.Background(), tn.n.k.user("u1"), "r").Result()
	if err != nil || !strings.Contains(v, `"away"`) {
		t.Fatalf("u1 in Redis after the re-assert: %q %v, want its new state", v, err)
	}
	if on, err := c.ZScore(context.Background(), tn.n.k.members("r"), "u1").Result(); err != nil {
		t.Fatalf("u1 not a member of r in Redis after the re-assert: %v %v", on, err)
	}
}

// TestReassertFailedHalfWay: Redis comes back empty and the first
// re-assert fails after its first chunk; the next one still knows every
// session was announced, and writes them back without a second join.
func TestReassertFailedHalfWay(t *testing.T) {
	r := redistest.Start(t)
	tn := startNode(t, r.Addr(), func(c *Config) { c.TTL = time.Minute; c.PipelineSize = 64 })
	const sessions = 3000 // 16 x 64 per re-assert chunk: three chunks
	for i := range sessions {
		tn.touch(t, fmt.Sprintf("u%d", i))
	}
	testkit.Eventually(t, 20*time.Second, "every join", func() bool { return tn.count(true, 0) == sessions })
	var chunks atomic.Int32
	fail := func() error {
		if chunks.Add(1) == 2 {
			return errors.New("test: re-assert chunk fails")
		}
		return nil
	}
	tn.n.testBeforeAssert.Store(&fail)
	asserts := tn.n.Stats().Reasserts
	r.Restart() // empty: no persistence
	testkit.Eventually(t, 20*time.Second, "a re-assert after the failed one", func() bool { return chunks.Load() > 3 })
	tn.waitReassert(t, asserts)
	tn.join(t, "marker")
	if got := tn.count(true, 0); got != sessions+1 {
		t.Fatalf("%d joins, want %d: sessions the failed re-assert did not reach were announced again", got, sessions+1)
	}
	c := r.Client()
	defer c.Close()
	if n, err := c.ZCard(context.Background(), tn.n.k.members("r")).Result(); err != nil || n != sessions+1 {
		t.Fatalf("room r holds %d members in Redis (%v), want %d", n, err, sessions+1)
	}
}

// TestSteadyStateCommandsPerHeartbeat measures, from INFO commandstats,
// the Redis commands per heartbeat once every session is joined, at the
// production ratio of interval to TTL (60s / 150s, scaled down), and the
// mean pipeline size.
func TestSteadyStateCommandsPerHeartbeat(t *testing.T) {
	r := redistest.Start(t)
	const (
		sessions = 20000
		ttl      = 6 * time.Second
		interval = ttl * 2 / 5 // 60s / 150s
	)
	tn := startNode(t, r.Addr(), func(c *Config) {
		c.TTL = ttl
		c.RefreshMargin = ttl / 15 // 10s of 150s, as in production
		c.FlushInterval = 50 * time.Millisecond
		c.ReapInterval = time.Hour // reaper cost is per bucket, not per heartbeat: left out here
		c.HealthInterval = time.Hour
	})
	users := make([][]byte, sessions)
	rooms := make([][]byte, sessions)
	for i := range users {
		users[i] = []byte(fmt.Sprintf("user-%d", i))
		rooms[i] = []byte(fmt.Sprintf("room-%d", i%50))
	}
	beat := func() {
		now := time.Now().UnixMilli()
		for i := range users {
			if _, err := tn.m.Touch(users[i], rooms[i], now, ttl.Milliseconds()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Rounds at fixed times, whatever a round costs: rounds 0-3 warm up
	// (joins, then a TTL of refreshes), rounds 4-7 are measured, from just
	// before round 4 to just before round 8 (the same phase).
	start := time.Now()
	tick := func(k int) { time.Sleep(time.Until(start.Add(time.Duration(k) * interval))) }
	var before map[string]int64
	var st0 Stats
	beats := 0
	for k := range 8 {
		tick(k)
		if k == 4 {
			before = redistest.CommandStats(t, r)
			st0 = tn.n.Stats()
		}
		beat()
		if k >= 4 {
			beats += sessions
		}
	}
	tick(8)
	after := redistest.CommandStats(t, r)
	st1 := tn.n.Stats()
	d := redistest.Diff(before, after)
	d["info"]-- // our own INFO
	var inner int64
	for k, v := range d {
		if k != "evalsha" && k != "info" {
			inner += v
		}
	}
	sent := st1.Commands - st0.Commands
	var pipes uint64
	for i := range st1.Pipelines {
		pipes += st1.Pipelines[i] - st0.Pipelines[i]
	}
	perHB := float64(d["evalsha"]) / float64(beats)
	if st1.Errors != st0.Errors || st1.Reasserts != st0.Reasserts {
		t.Logf("during the run: %d failed round trips, %d re-asserts", st1.Errors-st0.Errors, st1.Reasserts-st0.Reasserts)
	}
	t.Logf("%d heartbeats: %d top-level commands (%.3f per heartbeat), %d calls inside scripts (%.3f per heartbeat); %d pipelines of %.0f commands on average; commandstats delta: %s",
		beats, d["evalsha"], perHB, inner, float64(inner)/float64(beats), pipes, float64(sent)/float64(max(pipes, 1)), redistest.String(d))
	if perHB > 1 {
		t.Errorf("%.3f Redis commands per heartbeat, want at most 1", perHB)
	}
	if pipes > 0 && float64(sent)/float64(pipes) < 64 {
		t.Errorf("pipelines average %.1f commands, want at least 64 under load", float64(sent)/float64(pipes))
	}
}
