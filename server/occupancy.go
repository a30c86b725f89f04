package server

import (
	"sync"
	"time"

	"github.com/presenced/presenced/server/internal/events"
)

// bigRooms switches rooms with more than --room-events-max members from
// per-member events to one occupancy event per --occupancy-interval
// ({"room","online","joined","left"}), and back once they shrink below 90%
// of the limit (the hysteresis keeps a room at the edge from flapping). It
// sits before the debouncer on a single node: member events of a big room
// are counted here instead of offered.
type bigRooms struct {
	max int
	mu  struct {
		sync.Mutex
		rooms map[string]*roomTally
	}
}

type roomTally struct{ joined, left int64 }

func newBigRooms(max int) *bigRooms {
	b := &bigRooms{max: max}
	b.mu.rooms = map[string]*roomTally{}
	return b
}

// absorb reports whether ev (a member event of a room with online members
// now) is counted into its room's next occupancy event instead of being
// published.
func (b *bigRooms) absorb(ev *events.Event, online int) bool {
	if b.max <= 0 || ev.Room == "" {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.mu.rooms[ev.Room]
	if t == nil {
		if online <= b.max {
			return false
		}
		t = &roomTally{}
		b.mu.rooms[ev.Room] = t
	}
	switch ev.Type {
	case events.Join:
		t.joined++
	case events.Leave:
		t.left++
	}
	return true
}

// tick returns the occupancy events due now and drops the rooms that
// shrank below the hysteresis mark (their next member event is published).
func (b *bigRooms) tick(online func(room string) int, at int64) []*events.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*events.Event
	for room, t := range b.mu.rooms {
		n := online(room)
		out = append(out, &events.Event{Type: events.Occupancy, Room: room, At: at, Online: int64(n), Joined: t.joined, Left: t.left})
		t.joined, t.left = 0, 0
		if n*10 < b.max*9 {
			delete(b.mu.rooms, room)
		}
	}
	return out
}

// offerMember hands a member event to the debouncer unless its room is big.
func (s *Server) offerMember(ev *events.Event, now int64) {
	if s.big.max > 0 && ev.Room != "" && (ev.Type == events.Join || ev.Type == events.Leave || ev.Type == events.Update) {
		if s.big.absorb(ev, s.m.RoomOnline([]byte(ev.Room))) {
			return
		}
	}
	s.deb.Offer(ev, now)
}

// occupancyLoop publishes the big rooms' occupancy events.
func (s *Server) occupancyLoop() {
	if s.big.max <= 0 || s.cl != nil {
		return
	}
	t := time.NewTicker(s.cfg.OccupancyInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case now := <-t.C:
			for _, ev := range s.big.tick(func(r string) int { return s.m.RoomOnline([]byte(r)) }, now.UnixMilli()) {
				s.deb.Offer(ev, now.UnixMilli())
			}
		}
	}
}
