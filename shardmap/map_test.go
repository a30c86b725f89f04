package shardmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"
)

func newTestMap(t testing.TB, cfg Config) *Map {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func b(s string) []byte { return []byte(s) }

func mustTouch(t testing.TB, m *Map, user, room string, now, ttl int64) bool {
	t.Helper()
	joined, err := m.Touch(b(user), b(room), now, ttl)
	if err != nil {
		t.Fatalf("Touch(%q, %q): %v", user, room, err)
	}
	return joined
}

// checkStats checks m's counts; a zero want.Connections means one
// connection per session (no named connections).
func checkStats(t *testing.T, m *Map, want Stats) {
	t.Helper()
	if want.Connections == 0 {
		want.Connections = want.Sessions
	}
	if got := m.Stats(); got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
}

const t0 = int64(1_700_000_000_000)

func TestTouchJoinRefresh(t *testing.T) {
	m := newTestMap(t, Config{})
	steps := []struct {
		user, room string
		joined     bool
	}{
		{"alice", "r1", true},
		{"alice", "r1", false},
		{"alice", "r2", true},
		{"alice", "", true},
		{"alice", "", false},
		{"bob", "r1", true},
		{"bob", "r1", false},
	}
	for i, s := range steps {
		if got := mustTouch(t, m, s.user, s.room, t0+int64(i), 1000); got != s.joined {
			t.Fatalf("step %d Touch(%q, %q) joined = %v, want %v", i, s.user, s.room, got, s.joined)
		}
	}
	checkStats(t, m, Stats{OnlineUsers: 2, Sessions: 4, Rooms: 2})
	if n := m.RoomOnline(b("r1")); n != 2 {
		t.Fatalf("RoomOnline(r1) = %d, want 2", n)
	}
	rooms, last, online := m.User(b("alice"), nil)
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Room < rooms[j].Room })
	want := []RoomSession{{Room: "r1", LastSeen: t0 + 1, Expiry: t0 + 1001}, {Room: "r2", LastSeen: t0 + 2, Expiry: t0 + 1002}}
	if !online || last != t0+4 || !reflect.DeepEqual(rooms, want) {
		t.Fatalf("User(alice) = %v, %d, %v; want %v, %d, true", rooms, last, online, want, t0+4)
	}
}

func TestBadIDAndTooManyRooms(t *testing.T) {
	m := newTestMap(t, Config{MaxRoomsPerUser: 2})
	long := string(make([]byte, 129))
	for _, c := range []struct{ user, room string }{{"", "r"}, {long, "r"}, {"u", long}} {
		if _, err := m.Touch(b(c.user), b(c.room), t0, 10); !errors.Is(err, ErrBadID) {
			t.Fatalf("Touch(%d-byte user, %d-byte room) err = %v, want ErrBadID", len(c.user), len(c.room), err)
		}
	}
	mustTouch(t, m, "u", "a", t0, 10)
	mustTouch(t, m, "u", "b", t0, 10)
	if _, err := m.Touch(b("u"), b("c"), t0, 10); !errors.Is(err, ErrTooManyRooms) {
		t.Fatalf("third room err = %v, want ErrTooManyRooms", err)
	}
	mustTouch(t, m, "u", "a", t0, 10) // refresh still fine
	checkStats(t, m, Stats{OnlineUsers: 1, Sessions: 2, Rooms: 2})
	if m.RoomOnline(b("c")) != 0 {
		t.Fatal("refused join left a room behind")
	}
}

func TestLeave(t *testing.T) {
	m := newTestMap(t, Config{})
	mustTouch(t, m, "alice", "r1", t0, 1000)
	mustTouch(t, m, "alice", "r2", t0, 1000)
	mustTouch(t, m, "alice", "", t0, 1000)
	mustTouch(t, m, "bob", "r1", t0, 1000)
	if m.Leave(b("alice"), b("nope"), t0) || m.Leave(b("carol"), b("r1"), t0) {
		t.Fatal("Leave of a missing session reported true")
	}
	if !m.Leave(b("alice"), b("r1"), t0) || m.Leave(b("alice"), b("r1"), t0) {
		t.Fatal("Leave(alice, r1) twice: want true then false")
	}
	checkStats(t, m, Stats{OnlineUsers: 2, Sessions: 3, Rooms: 2})
	if n := m.RoomOnline(b("r1")); n != 1 {
		t.Fatalf("RoomOnline(r1) = %d, want 1", n)
	}
	ev := m.LeaveAll(b("alice"), t0+5, nil)
	sort.Slice(ev, func(i, j int) bool { return ev[i].Room < ev[j].Room })
	want := []Event{{User: "alice", Room: "", At: t0 + 5, Reason: ReasonLeft, LastSeen: t0}, {User: "alice", Room: "r2", At: t0 + 5, Reason: ReasonLeft, LastSeen: t0, Vacated: true}}
	if !reflect.DeepEqual(ev, want) {
		t.Fatalf("LeaveAll = %v, want %v", ev, want)
	}
	checkStats(t, m, Stats{OnlineUsers: 1, Sessions: 1, Rooms: 1})
	if _, _, online := m.User(b("alice"), nil); online {
		t.Fatal("alice still online")
	}
	if m.RoomOnline(b("r2")) != 0 {
		t.Fatal("r2 not freed")
	}
	if ev := m.LeaveAll(b("alice"), t0, nil); len(ev) != 0 {
		t.Fatalf("LeaveAll of an offline user = %v", ev)
	}
}

func TestExpiry(t *testing.T) {
	m := newTestMap(t, Config{})
	mustTouch(t, m, "a", "r", t0, 150_000)
	mustTouch(t, m, "b", "r", t0+50, 150_000)
	if ev := m.Expire(t0+150_000-1, nil); len(ev) != 0 {
		t.Fatalf("expired before ttl: %v", ev)
	}
	ev := m.Expire(t0+150_000, nil)
	if want := []Event{{User: "a", Room: "r", At: t0 + 150_000, Reason: ReasonTimeout, LastSeen: t0}}; !reflect.DeepEqual(ev, want) {
		t.Fatalf("Expire at ttl = %v, want %v", ev, want)
	}
	if ev[0].Reason.String() != "timeout" || ReasonLeft.String() != "left" {
		t.Fatal("Reason.String")
	}
	// A refresh moves the expiry.
	mustTouch(t, m, "b", "r", t0+100_000, 150_000)
	if ev := m.Expire(t0+200_000, nil); len(ev) != 0 {
		t.Fatalf("refreshed session expired at old expiry: %v", ev)
	}
	if ev := m.Expire(t0+250_000, nil); len(ev) != 1 || ev[0].User != "b" {
		t.Fatalf("Expire at new expiry = %v", ev)
	}
	checkStats(t, m, Stats{})
}

func TestWheelWrap(t *testing.T) {
	// 16 slots of 10 ms: the wheel turns every 160 ms.
	m := newTestMap(t, Config{Tick: 10 * time.Millisecond, WheelSlots: 16, Shards: 1})
	mustTouch(t, m, "long", "r", t0, 1000) // ~6 turns away
	mustTouch(t, m, "short", "r", t0, 35)
	var got []Event
	for now := t0; now <= t0+1200; now += 7 {
		for _, e := range m.Expire(now, nil) {
			if e.At < t0+map[string]int64{"long": 1000, "short": 35}[e.User] {
				t.Fatalf("%s expired early at %d", e.User, e.At-t0)
			}
			got = append(got, e)
		}
	}
	if len(got) != 2 || got[0].User != "short" || got[1].User != "long" || got[1].At > t0+1007 {
		t.Fatalf("events = %+v", got)
	}
	// A jump of several turns at once still expires everything due.
	mustTouch(t, m, "x", "", t0+2000, 500)
	mustTouch(t, m, "y", "", t0+2000, 5000)
	if ev := m.Expire(t0+4000, nil); len(ev) != 1 || ev[0].User != "x" {
		t.Fatalf("jump: %v", ev)
	}
	if ev := m.Expire(t0+7000, nil); len(ev) != 1 || ev[0].User != "y" {
		t.Fatalf("jump: %v", ev)
	}
}

func TestTouchBehindExpire(t *testing.T) {
	// A heartbeat stamped before the last Expire (callers' clocks differ a
	// little) must still expire on time, not a wheel turn later.
	m := newTestMap(t, Config{Tick: 10 * time.Millisecond, WheelSlots: 16})
	m.Expire(t0+1000, nil)
	mustTouch(t, m, "late", "r", t0, 100)
	if ev := m.Expire(t0+1001, nil); len(ev) != 1 {
		t.Fatalf("late session: %v", ev)
	}
}

func TestRestore(t *testing.T) {
	m := newTestMap(t, Config{})
	if ok, err := m.Restore(b("u"), b("r"), t0-200, t0, t0); ok || err != nil {
		t.Fatalf("Restore of an expired session = %v, %v", ok, err)
	}
	if ok, _ := m.Restore(b("u"), b("r"), t0-200, t0+100, t0); !ok {
		t.Fatal("Restore did not insert")
	}
	rooms, last, _ := m.User(b("u"), nil)
	if last != t0-200 || len(rooms) != 1 || rooms[0].Expiry != t0+100 {
		t.Fatalf("User after Restore = %v %d", rooms, last)
	}
	if ev := m.Expire(t0+100, nil); len(ev) != 1 {
		t.Fatalf("restored session did not expire: %v", ev)
	}
}

func TestTopRooms(t *testing.T) {
	m := newTestMap(t, Config{RoomShards: 4})
	counts := map[string]int{"a": 3, "b": 5, "c": 3, "d": 1, "e": 5, "f": 2}
	for room, n := range counts {
		for i := range n {
			mustTouch(t, m, fmt.Sprintf("u%d", i), room, t0, 1000)
		}
	}
	want := []RoomCount{{"b", 5}, {"e", 5}, {"a", 3}, {"c", 3}, {"f", 2}, {"d", 1}}
	for n := 0; n <= 7; n++ {
		got := m.TopRooms(n, nil)
		w := want[:min(n, len(want))]
		if !slices.Equal(got, w) {
			t.Fatalf("TopRooms(%d) = %v, want %v", n, got, w)
		}
	}
	// dst is appended to.
	if got := m.TopRooms(1, []RoomCount{{"x", 9}}); len(got) != 2 || got[1].Room != "b" {
		t.Fatalf("TopRooms with dst = %v", got)
	}
}

func membersAll(t *testing.T, m *Map, room string, limit int) []string {
	t.Helper()
	var all []string
	var cur uint64
	for i := 0; ; i++ {
		var page []Member
		page, cur = m.Members(b(room), cur, limit, nil)
		for _, p := range page {
			all = append(all, p.User)
		}
		if cur == 0 {
			break
		}
		if i > 100000 {
			t.Fatal("Members does not end")
		}
	}
	sort.Strings(all)
	return all
}

func TestMembersPaging(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4, 5} {
		r := rand.New(rand.NewPCG(seed, 99))
		m := newTestMap(t, Config{Shards: 4, RoomShards: 2})
		live := map[string]bool{}
		for i := range 300 {
			u := fmt.Sprintf("u%d", i)
			mustTouch(t, m, u, "room", t0, 1000)
			live[u] = true
		}
		// Walk while others join and leave between pages; "stable" users
		// (never touched during the walk) must be seen exactly once.
		touched := map[string]bool{}
		seen := map[string]int{}
		var cur uint64
		next := 300
		for pages := 0; ; pages++ {
			var page []Member
			page, cur = m.Members(b("room"), cur, 1+r.IntN(20), nil)
			for _, p := range page {
				seen[p.User]++
				if !live[p.User] {
					t.Fatalf("seed %d: member %q is not in the room", seed, p.User)
				}
			}
			if cur == 0 {
				break
			}
			for range r.IntN(8) {
				if r.IntN(2) == 0 {
					u := fmt.Sprintf("u%d", next)
					next++
					mustTouch(t, m, u, "room", t0, 1000)
					live[u], touched[u] = true, true
				} else {
					u := fmt.Sprintf("u%d", r.IntN(next))
					if live[u] {
						m.Leave(b(u), b("room"), t0)
						delete(live, u)
						touched[u] = true
					}
				}
			}
		}
		for u := range live {
			if !touched[u] && seen[u] != 1 {
				t.Fatalf("seed %d: stable member %q seen %d times", seed, u, seen[u])
			}
		}
		for u, n := range seen {
			if n > 1 {
				t.Fatalf("seed %d: %q seen %d times", seed, u, n)
			}
		}
		if got := len(membersAll(t, m, "room", 7)); got != len(live) || got != m.RoomOnline(b("room")) {
			t.Fatalf("seed %d: full walk %d members, live %d", seed, got, len(live))
		}
	}
	m := newTestMap(t, Config{})
	if ms, next := m.Members(b("none"), 0, 10, nil); len(ms) != 0 || next != 0 {
		t.Fatal("Members of a missing room")
	}
}

// collidingHash maps every id to one of four hashes, so nearly all ids share
// a shard, an index tag and a probe sequence.
func collidingHash(p []byte) uint64 {
	var h uint64
	for _, c := range p {
		h += uint64(c)
	}
	return (h % 4) * 0x0101010101010101
}

func TestHashCollisions(t *testing.T) {
	m, err := newWithHash(Config{Shards: 4, RoomShards: 4}, collidingHash)
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := range n {
		mustTouch(t, m, fmt.Sprintf("user-%d", i), fmt.Sprintf("room-%d", i%37), t0, 1000)
	}
	checkStats(t, m, Stats{OnlineUsers: n, Sessions: n, Rooms: 37})
	for i := 0; i < n; i += 2 {
		if !m.Leave(b(fmt.Sprintf("user-%d", i)), b(fmt.Sprintf("room-%d", i%37)), t0) {
			t.Fatalf("Leave user-%d", i)
		}
	}
	for i := range n {
		_, _, online := m.User(b(fmt.Sprintf("user-%d", i)), nil)
		if online != (i%2 == 1) {
			t.Fatalf("user-%d online = %v", i, online)
		}
	}
	for r := range 37 {
		want := 0
		for i := 1; i < n; i += 2 {
			if i%37 == r {
				want++
			}
		}
		if got := m.RoomOnline(b(fmt.Sprintf("room-%d", r))); got != want {
			t.Fatalf("room-%d online = %d, want %d", r, got, want)
		}
	}
	if ev := m.Expire(t0+1000, nil); len(ev) != n/2 {
		t.Fatalf("expired %d, want %d", len(ev), n/2)
	}
	checkStats(t, m, Stats{})
}

func TestIndexCollisions(t *testing.T) {
	// Drive the index directly: all entries share three tags, removals in
	// random order keep the rest findable.
	var x idIndex
	tag := func(i uint32) uint32 { return i % 3 }
	r := rand.New(rand.NewPCG(7, 7))
	live := map[uint32]bool{}
	for i := uint32(1); i <= 2000; i++ {
		x.insert(i, tag(i), tag)
		live[i] = true
	}
	for _, i := range r.Perm(2000) {
		idx := uint32(i + 1)
		x.remove(idx, tag(idx), tag)
		delete(live, idx)
		if i%97 == 0 {
			for j := range live {
				if x.find(tag(j), func(k uint32) bool { return k == j }) != j {
					t.Fatalf("lost %d", j)
				}
			}
		}
	}
	if x.n != 0 || len(x.slots) != idxMinSlots {
		t.Fatalf("n=%d slots=%d after removing all", x.n, len(x.slots))
	}
}

type change struct {
	user, room       string
	lastSeen, expiry int64
	ended            bool
	reason           Reason
}

func drain(m *Map) []change {
	var out []change
	m.Drain(func(c *Change) {
		out = append(out, change{string(c.User), string(c.Room), c.LastSeen, c.Expiry, c.Ended, c.Reason})
	})
	return out
}

func TestChangeLog(t *testing.T) {
	m := newTestMap(t, Config{Shards: 1, TrackChanges: true})
	for i := range 1000 {
		mustTouch(t, m, "u", "r", t0+int64(i), 100)
	}
	mustTouch(t, m, "v", "", t0, 100)
	want := []change{{"u", "r", t0 + 999, t0 + 1099, false, 0}, {"v", "", t0, t0 + 100, false, 0}}
	if got := drain(m); !slices.Equal(got, want) {
		t.Fatalf("coalesced drain = %v, want %v", got, want)
	}
	if got := drain(m); len(got) != 0 {
		t.Fatalf("second drain = %v", got)
	}
	// End and re-create between drains: end, then upsert.
	mustTouch(t, m, "u", "r", t0+2000, 100)
	m.Leave(b("u"), b("r"), t0+2001)
	mustTouch(t, m, "u", "r", t0+2002, 100)
	m.Expire(t0+2100, nil) // v expired long ago; u's new session not yet (2102)
	want = []change{
		{"u", "r", t0 + 2000, t0 + 2100, true, ReasonLeft},
		{"u", "r", t0 + 2002, t0 + 2102, false, 0},
		{"v", "", t0, t0 + 100, true, ReasonTimeout},
	}
	if got := drain(m); !slices.Equal(got, want) {
		t.Fatalf("drain = %v, want %v", got, want)
	}
	// A WebSocket's close: the change log records reason disconnect.
	mustTouch(t, m, "w", "wr", t0+3000, 100)
	drain(m)
	if evs := m.LeaveOneReason(b("w"), b("wr"), t0+3001, ReasonDisconnect, nil); len(evs) != 1 || evs[0].Reason != ReasonDisconnect || !evs[0].Vacated {
		t.Fatalf("LeaveOneReason = %+v, want one disconnect leave that vacates wr", evs)
	}
	if evs := m.LeaveOneReason(b("w"), b("wr"), t0+3002, ReasonDisconnect, nil); len(evs) != 0 {
		t.Fatalf("LeaveOneReason of an ended session = %+v", evs)
	}
	want = []change{{"w", "wr", t0 + 3000, t0 + 3100, true, ReasonDisconnect}}
	if got := drain(m); !slices.Equal(got, want) {
		t.Fatalf("drain = %v, want %v", got, want)
	}
	if ReasonDisconnect.String() != "disconnect" {
		t.Fatalf("ReasonDisconnect = %q", ReasonDisconnect)
	}
	off := newTestMap(t, Config{})
	mustTouch(t, off, "u", "r", t0, 100)
	if off.Drain(func(*Change) { t.Fatal("change without TrackChanges") }) != 0 {
		t.Fatal("Drain without TrackChanges")
	}
}

func TestRange(t *testing.T) {
	m := newTestMap(t, Config{Shards: 2})
	mustTouch(t, m, "a", "r1", t0, 10)
	mustTouch(t, m, "a", "", t0+1, 10)
	mustTouch(t, m, "b", "r1", t0+2, 10)
	var got []string
	m.Range(func(u, r []byte, ls, exp int64) bool {
		got = append(got, fmt.Sprintf("%s/%s/%d/%d", u, r, ls-t0, exp-t0))
		return true
	})
	sort.Strings(got)
	if want := []string{"a//1/11", "a/r1/0/10", "b/r1/2/12"}; !slices.Equal(got, want) {
		t.Fatalf("Range = %v, want %v", got, want)
	}
	n := 0
	m.Range(func(_, _ []byte, _, _ int64) bool { n++; return false })
	if n != 1 {
		t.Fatalf("Range did not stop: %d calls", n)
	}
}

func TestArenaReuse(t *testing.T) {
	m := newTestMap(t, Config{Shards: 1, RoomShards: 1, TrackChanges: true})
	fill := func(round int) {
		for i := range 20000 {
			// Vary lengths and names per round so reuse is not exact.
			u := fmt.Sprintf("user-%d-%0*d", round, 1+i%40, i)
			mustTouch(t, m, u, fmt.Sprintf("room-%d-%d", round, i%500), t0, 100)
		}
	}
	type sizes struct{ arena, index, users, sess, rArena, rIndex, rooms int }
	measure := func() sizes {
		st, rs := &m.shards[0].mu.userState, &m.rooms[0].mu.roomState
		return sizes{len(st.arena.buf), len(st.index.slots), len(st.users), len(st.sess),
			len(rs.arena.buf), len(rs.index.slots), len(rs.rooms)}
	}
	fill(1)
	full := measure()
	m.Expire(t0+100, nil)
	m.Drain(func(*Change) {})
	checkStats(t, m, Stats{})
	empty := measure()
	if empty.arena > arenaCompactMin || empty.rArena > arenaCompactMin || empty.index > 64 || empty.rIndex > 64 {
		t.Fatalf("empty map still holds %+v (full %+v)", empty, full)
	}
	for round := 2; round < 5; round++ {
		fill(round)
		m.Expire(t0+100, nil)
		m.Drain(func(*Change) {})
	}
	fill(5)
	if again := measure(); again.arena > full.arena*5/4 || again.users > full.users || again.sess > full.sess ||
		again.rooms > full.rooms || again.index > full.index || again.rArena > full.rArena*5/4 {
		t.Fatalf("refill grew: %+v, first fill %+v", again, full)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{
		{Shards: 3}, {Shards: 1 << 17}, {RoomShards: -1}, {MaxRoomsPerUser: 70000},
		{Tick: time.Microsecond}, {WheelSlots: 100}, {WheelSlots: 8},
	} {
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Fatalf("Validate(%+v) = %v", c, err)
		}
		if _, err := New(c); err == nil {
			t.Fatalf("New(%+v) succeeded", c)
		}
	}
}

func TestAllocs(t *testing.T) {
	m := newTestMap(t, Config{})
	user, room := b("user-0123456789"), b("room-1")
	mustTouch(t, m, "user-0123456789", "room-1", t0, 1000)
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now++
		m.Touch(user, room, now, 1000)
	}); n != 0 {
		t.Fatalf("Touch refresh: %v allocs, want 0", n)
	}
	for _, track := range []bool{false, true} {
		m := newTestMap(t, Config{TrackChanges: track})
		mustTouch(t, m, "user-0123456789", "room-1", t0, 1000)
		m.Leave(user, room, t0)
		m.Drain(func(*Change) {})
		if n := testing.AllocsPerRun(1000, func() {
			if j, _ := m.Touch(user, room, t0, 1000); !j {
				panic("not joined")
			}
			m.Leave(user, room, t0)
			m.Drain(func(*Change) {})
		}); n != 0 {
			t.Fatalf("TrackChanges=%v: Touch join after leave: %v allocs, want 0", track, n)
		}
	}
}

func TestMinRefreshGap(t *testing.T) {
	m, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.SetMinRefreshGap(time.Second)
	u, r := []byte("flooder"), []byte("room")
	if joined, err := m.Touch(u, r, 10_000, 5000); !joined || err != nil {
		t.Fatalf("join: %v %v", joined, err)
	}
	// A flood inside the gap changes nothing: the expiry stays where the
	// first heartbeat put it.
	for now := int64(10_001); now < 11_000; now += 7 {
		if _, err := m.Touch(u, r, now, 5000); err != ErrRateLimited {
			t.Fatalf("touch at %d: %v, want ErrRateLimited", now, err)
		}
	}
	rooms, last, _ := m.User(u, nil)
	if last != 10_000 || rooms[0].Expiry != 15_000 {
		t.Fatalf("flood moved the session: lastSeen %d expiry %d", last, rooms[0].Expiry)
	}
	if evs := m.Expire(15_000, nil); len(evs) != 1 {
		t.Fatalf("flooded session did not expire on time: %v", evs)
	}
	// After the gap a heartbeat refreshes again; another room is its own session.
	m.Touch(u, r, 20_000, 5000)
	if _, err := m.Touch(u, r, 21_000, 5000); err != nil {
		t.Fatalf("refresh after the gap: %v", err)
	}
	if _, err := m.Touch(u, []byte("other"), 21_001, 5000); err != nil {
		t.Fatalf("other room: %v", err)
	}
	m.SetMinRefreshGap(0)
	if _, err := m.Touch(u, r, 21_002, 5000); err != nil {
		t.Fatalf("limit off: %v", err)
	}
}

// TestDrainLogged: Change.Logged is what the sink set on the session's
// previous change, 0 for a new session and after a state change, and
// Relog clears it and puts every live session in the next drain.
func TestDrainLogged(t *testing.T) {
	m, err := New(Config{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	drain := func(set bool) {
		got = got[:0]
		m.Drain(func(c *Change) {
			got = append(got, c.Logged)
			if set {
				c.Logged = c.Expiry
			}
		})
	}
	touch := func(at int64, state string) {
		op := StateOp{}
		if state != "" {
			op = StateOp{Set: true, State: []byte(state)}
		}
		if _, err := m.TouchState([]byte("a"), []byte("r"), at, 10_000, op); err != nil {
			t.Fatal(err)
		}
	}
	touch(1_000_000, "")
	drain(true)
	if len(got) != 1 || got[0] != 0 {
		t.Fatalf("new session drained with Logged %v, want [0]", got)
	}
	touch(1_002_500, "")
	drain(false) // the sink does not record this one
	if len(got) != 1 || got[0] != 1_010_000 {
		t.Fatalf("refresh drained with Logged %v, want [1010000] (the first change's expiry)", got)
	}
	touch(1_003_000, "")
	drain(false)
	if len(got) != 1 || got[0] != 1_010_000 {
		t.Fatalf("a change the sink did not record moved Logged: %v", got)
	}
	touch(1_004_000, `{"x":1}`)
	drain(true)
	if len(got) != 1 || got[0] != 0 {
		t.Fatalf("state change drained with Logged %v, want [0]", got)
	}
	drain(true)
	if len(got) != 0 {
		t.Fatalf("nothing changed, yet %d drained", len(got))
	}
	m.Relog()
	drain(true)
	if len(got) != 1 || got[0] != 0 {
		t.Fatalf("after Relog: %v, want the live session with Logged 0", got)
	}
}

// TestRefreshExpiresAtTheLastExpiry: a refreshed session expires at its
// last expiry, not at an earlier one and not later; also when the TTL
// wraps a small wheel, and when a Restore moves the expiry earlier.
func TestRefreshExpiresAtTheLastExpiry(t *testing.T) {
	for _, slots := range []int{16, 4096} {
		m, err := New(Config{Tick: time.Millisecond, WheelSlots: slots})
		if err != nil {
			t.Fatal(err)
		}
		const base = int64(1_000_000)
		if _, err := m.Touch([]byte("a"), []byte("r"), base, 100); err != nil {
			t.Fatal(err)
		}
		for at := base + 10; at <= base+90; at += 10 { // expiry ends at base+190
			if _, err := m.Touch([]byte("a"), []byte("r"), at, 100); err != nil {
				t.Fatal(err)
			}
			if evs := m.Expire(at, nil); len(evs) != 0 {
				t.Fatalf("slots %d: expired at %d, before its expiry: %v", slots, at, evs)
			}
		}
		for now := base + 91; now < base+190; now += 7 {
			if evs := m.Expire(now, nil); len(evs) != 0 {
				t.Fatalf("slots %d: expired at +%d, before its expiry +190", slots, now-base)
			}
		}
		if evs := m.Expire(base+190, nil); len(evs) != 1 || evs[0].Reason != ReasonTimeout {
			t.Fatalf("slots %d: at its expiry got %v, want one timeout", slots, evs)
		}
		// An earlier expiry (a restore) is filed at once.
		if _, err := m.Restore([]byte("b"), []byte("r"), base+200, base+1000, base+200); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Restore([]byte("b"), []byte("r"), base+200, base+250, base+200); err != nil {
			t.Fatal(err)
		}
		if evs := m.Expire(base+249, nil); len(evs) != 0 {
			t.Fatalf("slots %d: b expired early: %v", slots, evs)
		}
		if evs := m.Expire(base+250, nil); len(evs) != 1 {
			t.Fatalf("slots %d: b not expired at its restored expiry: %v", slots, evs)
		}
	}
}
