package server

import (
	"sync"
	"sync/atomic"

	"github.com/presenced/presenced/shardmap"
)

// departedUsers remembers when users whose sessions all ended were last
// seen, so GET /v1/users answers last_seen after a leave or a timeout: on a
// node without a write-ahead log it is the only copy; with one it covers
// the time until the log's next commit (persist keeps it on disk). It
// holds at most max users (--last-seen-memory-users): when full, a new user
// replaces an arbitrary one (Go's map order, so clients cannot choose whom),
// counted in presenced_last_seen_memory_evictions_total. An entry older than
// --last-seen-retention is not reported and is dropped when met.
//
// Its methods take one mutex and may be called from any goroutine; they are
// on the leave and sweep paths, never on the heartbeat path.
type departedUsers struct {
	max       int
	retention int64 // ms
	evictions atomic.Uint64
	mu        struct {
		sync.Mutex
		seen map[string]int64 // user -> last seen, unix ms
	}
}

// newDepartedUsers returns nil (remember nothing) when max is 0.
func newDepartedUsers(max int, retentionMs int64) *departedUsers {
	if max <= 0 {
		return nil
	}
	d := &departedUsers{max: max, retention: retentionMs}
	d.mu.seen = make(map[string]int64)
	return d
}

// note records that user was last seen at ms (unix ms), keeping the later
// of ms and what was known.
func (d *departedUsers) note(user string, ms int64) {
	if d == nil || ms <= 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.mu.seen[user]; ok {
		d.mu.seen[user] = max(old, ms)
		return
	}
	if len(d.mu.seen) >= d.max {
		for k := range d.mu.seen {
			delete(d.mu.seen, k)
			d.evictions.Add(1)
			break
		}
	}
	d.mu.seen[user] = ms
}

// noteLeaves records the last-seen times of the leave events in evs.
func (d *departedUsers) noteLeaves(evs []shardmap.Event) {
	if d == nil {
		return
	}
	for i := range evs {
		if !evs[i].Join {
			d.note(evs[i].User, evs[i].LastSeen)
		}
	}
}

// get returns user's last-seen time, if known and within the retention at
// nowMs.
func (d *departedUsers) get(user string, nowMs int64) (int64, bool) {
	if d == nil {
		return 0, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ms, ok := d.mu.seen[user]
	if ok && nowMs-ms > d.retention {
		delete(d.mu.seen, user)
		return 0, false
	}
	return ms, ok
}

// len returns how many users are remembered.
func (d *departedUsers) len() int {
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.mu.seen)
}
