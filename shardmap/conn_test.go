package shardmap

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func touchConn(t *testing.T, m *Map, user, room, conn string, now, ttl int64, state string) TouchResult {
	t.Helper()
	op := StateOp{}
	if state != "" {
		op = StateOp{Set: true, State: b(state)}
	}
	r, err := m.TouchConn(b(user), b(room), b(conn), now, ttl, op)
	if err != nil {
		t.Fatalf("TouchConn(%s,%s,%s): %v", user, room, conn, err)
	}
	return r
}

func memberOf(t *testing.T, m *Map, room, user string) *Member {
	t.Helper()
	ms, _ := m.Members(b(room), 0, 100, nil)
	for i := range ms {
		if ms[i].User == user {
			return &ms[i]
		}
	}
	return nil
}

func TestConnsTwoTabs(t *testing.T) {
	m := newTestMap(t, Config{})
	const t0 = 1_700_000_000_000
	if r := touchConn(t, m, "alice", "doc", "tab1", t0, 1000, `{"tab":1}`); !r.Joined || !r.Changed {
		t.Fatalf("first tab: %+v, want a join with a state", r)
	}
	r := touchConn(t, m, "alice", "doc", "tab2", t0+10, 1000, `{"tab":2}`)
	if r.Joined || !r.ConnStarted || !r.Changed || len(r.Conns) != 2 || string(r.State) != `{"tab":2}` {
		t.Fatalf("second tab: %+v, want a started connection with 2 connections", r)
	}
	if st := m.Stats(); st.Sessions != 1 || st.Connections != 2 || st.OnlineUsers != 1 || m.RoomOnline(b("doc")) != 1 {
		t.Fatalf("stats %+v online %d", st, m.RoomOnline(b("doc")))
	}
	// tab 1 heartbeats again: its own state stays, the member's state is
	// the latest heartbeat's, and nothing is news.
	if r := touchConn(t, m, "alice", "doc", "tab1", t0+20, 1000, ""); r.Changed || r.ConnStarted || r.Conns != nil {
		t.Fatalf("refresh of tab1: %+v, want no change", r)
	}
	mem := memberOf(t, m, "doc", "alice")
	if mem == nil || string(mem.State) != `{"tab":1}` || mem.LastSeen != t0+20 || len(mem.Conns) != 2 {
		t.Fatalf("member %+v", mem)
	}
	// tab 1 closes: an update, alice stays.
	evs, n := m.LeaveConn(b("alice"), b("doc"), b("tab1"), t0+30, ReasonDisconnect, nil)
	if n != 1 || len(evs) != 1 || !evs[0].Update || evs[0].Conn != "tab1" || evs[0].Reason != ReasonDisconnect ||
		len(evs[0].Conns) != 1 || evs[0].Conns[0].ID != "tab2" || string(evs[0].State) != `{"tab":2}` {
		t.Fatalf("tab1 leave: %d %+v", n, evs)
	}
	if memberOf(t, m, "doc", "alice") == nil || m.Stats().Connections != 1 {
		t.Fatalf("alice gone after one of two tabs closed")
	}
	// tab 2 closes: the member leaves, with that reason.
	evs, n = m.LeaveConn(b("alice"), b("doc"), b("tab2"), t0+40, ReasonLeft, nil)
	if n != 1 || len(evs) != 1 || evs[0].Update || evs[0].Join || evs[0].Reason != ReasonLeft || !evs[0].Vacated {
		t.Fatalf("tab2 leave: %d %+v", n, evs)
	}
	if st := m.Stats(); st != (Stats{}) {
		t.Fatalf("stats after both left: %+v", st)
	}
}

func TestConnsExpireOneByOne(t *testing.T) {
	m := newTestMap(t, Config{Tick: 10 * 1e6})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "bob", "r", "phone", t0, 1000, "")
	touchConn(t, m, "bob", "r", "laptop", t0+500, 1000, "")
	if evs := m.Expire(t0+999, nil); len(evs) != 0 {
		t.Fatalf("early expire: %+v", evs)
	}
	evs := m.Expire(t0+1000, nil)
	if len(evs) != 1 || !evs[0].Update || evs[0].Conn != "phone" || evs[0].Reason != ReasonTimeout || len(evs[0].Conns) != 1 {
		t.Fatalf("phone expiry: %+v", evs)
	}
	// the laptop keeps the session alive with its own heartbeats
	touchConn(t, m, "bob", "r", "laptop", t0+1400, 1000, "")
	if evs := m.Expire(t0+2000, nil); len(evs) != 0 {
		t.Fatalf("laptop refreshed, yet: %+v", evs)
	}
	evs = m.Expire(t0+2400, nil)
	if len(evs) != 1 || evs[0].Update || evs[0].Reason != ReasonTimeout || evs[0].LastSeen != t0+1400 {
		t.Fatalf("last connection's expiry: %+v", evs)
	}
}

func TestConnsDefaultAndNamed(t *testing.T) {
	m := newTestMap(t, Config{})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "carol", "r", "", t0, 1000, `{"a":1}`)
	r := touchConn(t, m, "carol", "r", "x", t0+1, 1000, "")
	if !r.ConnStarted || len(r.Conns) != 2 || r.Conns[0].ID != DefaultConn || string(r.Conns[0].State) != `{"a":1}` {
		t.Fatalf("named after default: %+v", r)
	}
	// a leave without conn ends the session whole
	evs, n := m.LeaveConn(b("carol"), b("r"), nil, t0+2, ReasonLeft, nil)
	if n != 1 || len(evs) != 1 || evs[0].Update {
		t.Fatalf("leave without conn: %d %+v", n, evs)
	}
	// back to plain form when the named connection goes
	touchConn(t, m, "carol", "r", "", t0+3, 1000, `{"a":2}`)
	touchConn(t, m, "carol", "r", "x", t0+4, 1000, "")
	m.LeaveConn(b("carol"), b("r"), b("x"), t0+5, ReasonLeft, nil)
	sh := &m.shards[m.hash(b("carol"))&m.shardMask]
	if len(sh.mu.conns) != 0 || len(sh.mu.connStates) != 0 {
		t.Fatalf("session kept its connection set with only the default connection")
	}
	mem := memberOf(t, m, "r", "carol")
	if mem == nil || string(mem.State) != `{"a":2}` || mem.Conns != nil {
		t.Fatalf("member after collapse: %+v", mem)
	}
	// a leave naming an unknown connection changes nothing
	if evs, n := m.LeaveConn(b("carol"), b("r"), b("nope"), t0+6, ReasonLeft, nil); n != 0 || len(evs) != 0 {
		t.Fatalf("unknown conn: %d %+v", n, evs)
	}
}

func TestConnsLimit(t *testing.T) {
	m := newTestMap(t, Config{MaxConnsPerSession: 2})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "d", "r", "a", t0, 1000, "")
	touchConn(t, m, "d", "r", "b", t0, 1000, "")
	if _, err := m.TouchConn(b("d"), b("r"), b("c"), t0, 1000, StateOp{}); !errors.Is(err, ErrTooManyConns) {
		t.Fatalf("third connection: %v, want ErrTooManyConns", err)
	}
	if _, err := m.TouchConn(b("d"), b("r"), make([]byte, 65), t0, 1000, StateOp{}); !errors.Is(err, ErrBadConn) {
		t.Fatalf("65-byte connection id: %v", err)
	}
	if m.Stats().Connections != 2 {
		t.Fatalf("refused connections counted: %+v", m.Stats())
	}
}

func TestConnsLeaveAllRooms(t *testing.T) {
	m := newTestMap(t, Config{})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "e", "r1", "a", t0, 1000, "")
	touchConn(t, m, "e", "r1", "b", t0, 1000, "")
	touchConn(t, m, "e", "r2", "a", t0, 1000, "")
	evs, n := m.LeaveConn(b("e"), nil, b("a"), t0+1, ReasonLeft, nil)
	if n != 2 || len(evs) != 2 {
		t.Fatalf("leave conn a everywhere: %d %+v", n, evs)
	}
	if m.RoomOnline(b("r1")) != 1 || m.RoomOnline(b("r2")) != 0 || m.Stats().Connections != 1 {
		t.Fatalf("after: r1 %d r2 %d %+v", m.RoomOnline(b("r1")), m.RoomOnline(b("r2")), m.Stats())
	}
}

func TestConnsDurableRoundTrip(t *testing.T) {
	m := newTestMap(t, Config{TrackChanges: true})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "f", "r", "tab1", t0, 5000, `{"t":1}`)
	touchConn(t, m, "f", "r", "tab2", t0+100, 5000, `{"t":2}`)
	type rec struct {
		user, room, state string
		ls, exp           int64
	}
	var got []rec
	m.Drain(func(c *Change) {
		st := c.State
		if c.Conns != nil {
			st = c.Conns
		}
		got = append(got, rec{string(c.User), string(c.Room), string(st), c.LastSeen, c.Expiry})
	})
	if len(got) != 1 || !IsConns([]byte(got[0].state)) || got[0].ls != t0+100 || got[0].exp != t0+5100 {
		t.Fatalf("drained %+v", got)
	}
	m2 := newTestMap(t, Config{})
	if _, err := m2.RestoreState(b("f"), b("r"), []byte(got[0].state), got[0].ls, got[0].exp, t0+200); err != nil {
		t.Fatal(err)
	}
	mem := memberOf(t, m2, "r", "f")
	if mem == nil || len(mem.Conns) != 2 || string(mem.State) != `{"t":2}` || mem.LastSeen != t0+100 {
		t.Fatalf("restored member %+v", mem)
	}
	for _, c := range mem.Conns {
		if want := map[string]string{"tab1": `{"t":1}`, "tab2": `{"t":2}`}[c.ID]; string(c.State) != want || c.Expiry != t0+5100 {
			t.Fatalf("restored conn %+v", c)
		}
	}
	if _, ok := DecodeConns([]byte(got[0].state)[:10]); ok {
		t.Fatal("truncated durable form decoded")
	}
}

func TestConnRefreshAllocs(t *testing.T) {
	m := newTestMap(t, Config{TrackChanges: true})
	const t0 = 1_700_000_000_000
	touchConn(t, m, "g", "r", "tab1", t0, 5000, `{"t":1}`)
	touchConn(t, m, "g", "r", "tab2", t0, 5000, `{"t":2}`)
	m.Drain(func(*Change) {})
	now := int64(t0)
	user, room, c1, c2 := b("g"), b("r"), b("tab1"), b("tab2")
	allocs := testing.AllocsPerRun(200, func() {
		now++
		m.TouchConn(user, room, c1, now, 5000, StateOp{})
		m.TouchConn(user, room, c2, now, 5000, StateOp{})
		m.Drain(func(*Change) {})
	})
	if allocs != 0 {
		t.Fatalf("refreshing named connections allocates %.1f times", allocs)
	}
}

// TestConnsModel runs random heartbeats, leaves and expiries of a few
// users, rooms and connections against a plain model of connections and
// compares every session's connections, the counts and the events.
func TestConnsModel(t *testing.T) {
	type key struct{ user, room string }
	type mconn struct {
		lastSeen, expiry int64
	}
	for seed := range 20 {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		m := newTestMap(t, Config{Tick: 10 * time.Millisecond, MaxConnsPerSession: 3, TrackChanges: seed%2 == 0})
		model := map[key]map[string]mconn{}
		users, rooms, conns := []string{"u1", "u2", "u3"}, []string{"", "r1", "r2"}, []string{"", "a", "b", "c", "d"}
		now := int64(1_700_000_000_000)
		for step := range 400 {
			u, rm, c := users[r.IntN(len(users))], rooms[r.IntN(len(rooms))], conns[r.IntN(len(conns))]
			k := key{u, rm}
			switch op := r.IntN(10); {
			case op < 6:
				ttl := int64(50 + r.IntN(200))
				_, err := m.TouchConn(b(u), b(rm), b(c), now, ttl, StateOp{})
				cs := model[k]
				if _, ok := cs[c]; !ok && len(cs) >= 3 {
					if !errors.Is(err, ErrTooManyConns) {
						t.Fatalf("seed %d step %d: 4th connection: %v", seed, step, err)
					}
					break
				}
				if err != nil {
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
				if cs == nil {
					cs = map[string]mconn{}
					model[k] = cs
				}
				cs[c] = mconn{now, now + ttl}
			case op < 8 && rm != "":
				evs, n := m.LeaveConn(b(u), b(rm), b(c), now, ReasonLeft, nil)
				want := 0
				if cs := model[k]; cs != nil {
					if c == "" {
						want = 1
						delete(model, k)
					} else if _, ok := cs[c]; ok {
						want = 1
						delete(cs, c)
						if len(cs) == 0 {
							delete(model, k)
						}
					}
				}
				if n != want || len(evs) != want {
					t.Fatalf("seed %d step %d: LeaveConn(%s,%s,%q) = %d %+v, want %d", seed, step, u, rm, c, n, evs, want)
				}
			default:
				now += int64(r.IntN(150))
				wantUpd, wantLeave := 0, 0
				for k, cs := range model {
					for id, mc := range cs {
						if mc.expiry <= now {
							delete(cs, id)
							wantUpd++
						}
					}
					if len(cs) == 0 {
						delete(model, k)
						wantLeave++
					}
				}
				gotUpd, gotLeave := 0, 0
				for _, ev := range m.Expire(now, nil) {
					if ev.Update {
						gotUpd++
					} else {
						gotLeave++
					}
				}
				// every expired connection of a session that ended is in its leave
				if gotLeave != wantLeave || gotUpd > wantUpd {
					t.Fatalf("seed %d step %d: Expire: %d updates %d leaves, want <= %d and %d", seed, step, gotUpd, gotLeave, wantUpd, wantLeave)
				}
			}
			// compare
			total := 0
			for k, cs := range model {
				total += len(cs)
				rs, _, online := m.User(b(k.user), nil)
				if !online {
					t.Fatalf("seed %d step %d: %s offline, model has %v", seed, step, k.user, model)
				}
				var got []Conn
				for _, s := range rs {
					if s.Room == k.room {
						got = s.Conns
						if got == nil {
							// a plain session: its default connection is the session
							got = []Conn{{ID: DefaultConn, LastSeen: s.LastSeen, Expiry: s.Expiry}}
						}
					}
				}
				if k.room == "" && got == nil && len(cs) == 1 {
					if _, ok := cs[""]; ok {
						continue // a plain room-less session without state is not listed
					}
				}
				if len(got) != len(cs) {
					t.Fatalf("seed %d step %d: %v conns %+v, model %v", seed, step, k, got, cs)
				}
				for _, gc := range got {
					mc, ok := cs[gc.ID]
					if !ok || mc.lastSeen != gc.LastSeen || mc.expiry != gc.Expiry {
						t.Fatalf("seed %d step %d: %v conn %+v, model %v", seed, step, k, gc, cs)
					}
				}
			}
			if st := m.Stats(); st.Sessions != int64(len(model)) || st.Connections != int64(total) {
				t.Fatalf("seed %d step %d: stats %+v, model %d sessions %d connections", seed, step, st, len(model), total)
			}
			if m.track {
				m.Drain(func(*Change) {})
			}
		}
	}
}
