package shardmap

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// model is the obvious map-based presence table the Map must agree with.
type model struct {
	sess     map[string]map[string][2]int64 // user -> room -> {lastSeen, expiry}
	maxRooms int
}

func (md *model) touch(u, r string, now, ttl int64) (bool, error) {
	rooms := md.sess[u]
	if _, ok := rooms[r]; !ok && len(rooms) >= md.maxRooms {
		return false, ErrTooManyRooms
	}
	if rooms == nil {
		rooms = map[string][2]int64{}
		md.sess[u] = rooms
	}
	_, ok := rooms[r]
	rooms[r] = [2]int64{now, now + ttl}
	return !ok, nil
}

func (md *model) remove(u, r string) {
	delete(md.sess[u], r)
	if len(md.sess[u]) == 0 {
		delete(md.sess, u)
	}
}

func (md *model) expire(now int64) []string {
	var out []string
	for u, rooms := range md.sess {
		for r, s := range rooms {
			if s[1] <= now {
				out = append(out, u+"/"+r)
				md.remove(u, r)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (md *model) roomCounts() map[string]int {
	c := map[string]int{}
	for _, rooms := range md.sess {
		for r := range rooms {
			if r != "" {
				c[r]++
			}
		}
	}
	return c
}

func eventKeys(ev []Event, reason Reason, t *testing.T) []string {
	var out []string
	for _, e := range ev {
		if e.Reason != reason || e.Join {
			t.Fatalf("event %+v, want reason %v", e, reason)
		}
		out = append(out, e.User+"/"+e.Room)
	}
	sort.Strings(out)
	return out
}

func TestModel(t *testing.T) {
	hashes := map[string]func([]byte) uint64{"colliding": collidingHash, "fnv": fnv64}
	for name, hash := range hashes {
		for seed := uint64(1); seed <= 4; seed++ {
			t.Run(fmt.Sprintf("%s/%d", name, seed), func(t *testing.T) {
				runModel(t, seed, hash, 3000)
			})
		}
	}
}

func fnv64(p []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range p {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

func runModel(t *testing.T, seed uint64, hash func([]byte) uint64, steps int) {
	r := rand.New(rand.NewPCG(seed, 1))
	m, err := newWithHash(Config{Shards: 4, RoomShards: 2, MaxRoomsPerUser: 3, Tick: 10 * time.Millisecond, WheelSlots: 16, TrackChanges: true}, hash)
	if err != nil {
		t.Fatal(err)
	}
	md := &model{sess: map[string]map[string][2]int64{}, maxRooms: 3}
	users := make([]string, 40)
	for i := range users {
		users[i] = fmt.Sprintf("u%0*d", 1+r.IntN(20), i)
	}
	rooms := []string{"", "a", "b", "c", "dd", "eee", "a-long-room-name-0123456789"}
	// replica is rebuilt from the change log only; after each Drain it must
	// equal the model.
	replica := map[[2]string][2]int64{}
	now := t0
	for step := range steps {
		if r.IntN(20) == 0 {
			m.Drain(func(c *Change) {
				k := [2]string{string(c.User), string(c.Room)}
				if c.Ended {
					// May end a session that never drained (created
					// and ended since the last Drain): a no-op here.
					delete(replica, k)
				} else {
					replica[k] = [2]int64{c.LastSeen, c.Expiry}
				}
			})
			want := map[[2]string][2]int64{}
			for u, rooms := range md.sess {
				for rm, s := range rooms {
					want[[2]string{u, rm}] = s
				}
			}
			if !maps.Equal(replica, want) {
				t.Fatalf("step %d: replica from Drain %v, model %v", step, replica, want)
			}
		}
		u, rm := users[r.IntN(len(users))], rooms[r.IntN(len(rooms))]
		switch op := r.IntN(10); {
		case op < 5:
			ttl := int64(r.IntN(400))
			gotJ, gotErr := m.Touch(b(u), b(rm), now, ttl)
			wantJ, wantErr := md.touch(u, rm, now, ttl)
			if gotJ != wantJ || !errors.Is(gotErr, wantErr) {
				t.Fatalf("step %d Touch(%s,%s) = %v,%v want %v,%v", step, u, rm, gotJ, gotErr, wantJ, wantErr)
			}
		case op < 6:
			_, want := md.sess[u][rm]
			if got := m.Leave(b(u), b(rm), now); got != want {
				t.Fatalf("step %d Leave(%s,%s) = %v want %v", step, u, rm, got, want)
			}
			md.remove(u, rm)
		case op < 7:
			var want []string
			for rr := range md.sess[u] {
				want = append(want, u+"/"+rr)
			}
			sort.Strings(want)
			md.remove(u, "")
			delete(md.sess, u)
			if got := eventKeys(m.LeaveAll(b(u), now, nil), ReasonLeft, t); !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d LeaveAll(%s) = %v want %v", step, u, got, want)
			}
		default:
			now += int64(r.IntN(120))
			want := md.expire(now)
			if got := eventKeys(m.Expire(now, nil), ReasonTimeout, t); !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d Expire(%d) = %v want %v", step, now-t0, got, want)
			}
		}
		compareModel(t, step, m, md, users, rooms)
	}
}

func compareModel(t *testing.T, step int, m *Map, md *model, users, rooms []string) {
	t.Helper()
	nsess := 0
	for _, u := range users {
		got, last, online := m.User(b(u), nil)
		sort.Slice(got, func(i, j int) bool { return got[i].Room < got[j].Room })
		var want []RoomSession
		var wantLast int64
		for r, s := range md.sess[u] {
			nsess++
			wantLast = max(wantLast, s[0])
			if r != "" {
				want = append(want, RoomSession{Room: r, LastSeen: s[0], Expiry: s[1]})
			}
		}
		sort.Slice(want, func(i, j int) bool { return want[i].Room < want[j].Room })
		if online != (md.sess[u] != nil) || last != wantLast || !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d User(%s) = %v,%d,%v want %v,%d", step, u, got, last, online, want, wantLast)
		}
	}
	counts := md.roomCounts()
	for _, r := range rooms[1:] {
		if got := m.RoomOnline(b(r)); got != counts[r] {
			t.Fatalf("step %d RoomOnline(%s) = %d want %d", step, r, got, counts[r])
		}
		var want []string
		for u, rs := range md.sess {
			if _, ok := rs[r]; ok {
				want = append(want, u)
			}
		}
		sort.Strings(want)
		if got := membersAll(t, m, r, 1+step%5); !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d Members(%s) = %v want %v", step, r, got, want)
		}
	}
	if got, want := m.Stats(), (Stats{int64(len(md.sess)), int64(nsess), int64(len(counts)), int64(nsess)}); got != want {
		t.Fatalf("step %d Stats = %+v want %+v", step, got, want)
	}
	var wantTop []RoomCount
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		wantTop = append(wantTop, RoomCount{r, counts[r]})
	}
	sort.SliceStable(wantTop, func(i, j int) bool { return wantTop[i].Online > wantTop[j].Online })
	if got := m.TopRooms(3, nil); !slices.Equal(got, wantTop[:min(3, len(wantTop))]) {
		t.Fatalf("step %d TopRooms = %v want %v", step, got, wantTop)
	}
}

func TestConcurrent(t *testing.T) {
	m := newTestMap(t, Config{Shards: 8, RoomShards: 4, TrackChanges: true, Tick: time.Millisecond, WheelSlots: 64})
	var wg sync.WaitGroup
	var clock sync.Mutex
	now := t0
	tick := func() int64 {
		clock.Lock()
		defer clock.Unlock()
		now++
		return now
	}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 3))
			var ms []Member
			var rs []RoomSession
			for range 3000 {
				u := b(fmt.Sprintf("u%d", r.IntN(200)))
				room := b(fmt.Sprintf("r%d", r.IntN(10)))
				switch r.IntN(10) {
				case 0:
					m.Leave(u, room, tick())
				case 1:
					m.LeaveAll(u, tick(), nil)
				case 2:
					m.Expire(tick(), nil)
				case 3:
					ms, _ = m.Members(room, uint64(r.IntN(50)), 20, ms[:0])
					m.TopRooms(5, nil)
					m.RoomOnline(room)
				case 4:
					rs, _, _ = m.User(u, rs[:0])
					m.Stats()
				case 5:
					m.Drain(func(*Change) {})
					m.Range(func(_, _ []byte, _, _ int64) bool { return true })
				default:
					if _, err := m.Touch(u, room, tick(), int64(r.IntN(50))); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// Counts must still agree with the content.
	users, sessions := map[string]bool{}, 0
	rooms := map[string]int{}
	m.Range(func(u, r []byte, _, _ int64) bool {
		users[string(u)] = true
		sessions++
		rooms[string(r)]++
		return true
	})
	if got := m.Stats(); got != (Stats{int64(len(users)), int64(sessions), int64(len(rooms)), int64(sessions)}) {
		t.Fatalf("Stats %+v, content %d users %d sessions %d rooms", got, len(users), sessions, len(rooms))
	}
	for r, n := range rooms {
		if m.RoomOnline(b(r)) != n {
			t.Fatalf("room %s: online %d, content %d", r, m.RoomOnline(b(r)), n)
		}
	}
	m.Expire(now+1000, nil)
	if got := m.Stats(); got != (Stats{}) {
		t.Fatalf("after expiring all: %+v", got)
	}
}
