package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func join(user, room string) *Event { return &Event{Type: Join, User: user, Room: room, At: 1} }

// drain reads from s until it has want events or nothing more comes.
func drain(t *testing.T, b *Bus, s *Sub, want int) []*Event {
	t.Helper()
	var got []*Event
	for len(got) < want {
		tm := time.NewTimer(2 * time.Second)
		wake := make(chan time.Time)
		go func() { <-tm.C; close(wake) }()
		evs, err := b.Next(s, nil, 100, wake)
		tm.Stop()
		if err != nil || len(evs) == 0 {
			t.Fatalf("after %d of %d events: %v", len(got), want, err)
		}
		got = append(got, evs...)
	}
	return got
}

func TestSlowSubscriberCatchesUpFromHistory(t *testing.T) {
	b := New(Config{History: 1000, Buffer: 4, Epoch: 7})
	s := b.Subscribe("", true, nil)
	for i := range 100 {
		b.Publish(join(fmt.Sprint(i), "r"))
	}
	got := drain(t, b, s, 100)
	for i, ev := range got {
		if ev.User != fmt.Sprint(i) || ev.Type != Join || ev.ID != (ID{7, uint64(i + 1)}) {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	if st := b.Stats(); st.Overflows == 0 || st.Resets != 0 {
		t.Fatalf("stats %+v: want an overflow and no reset", st)
	}
}

func TestSlowSubscriberBeyondHistoryGetsReset(t *testing.T) {
	b := New(Config{History: 10, Buffer: 4, Epoch: 7})
	s := b.Subscribe("r", false, nil)
	for i := range 50 {
		b.Publish(join(fmt.Sprint(i), "r"))
	}
	got := drain(t, b, s, 1)
	if got[0].Type != Reset || got[0].Reason != ReasonHistoryLost {
		t.Fatalf("first = %+v, want reset", got[0])
	}
	b.Publish(join("live", "r"))
	if got := drain(t, b, s, 1); got[0].User != "live" {
		t.Fatalf("after reset: %+v", got[0])
	}
}

func TestRoomFilterAndResume(t *testing.T) {
	b := New(Config{History: 100, Epoch: 1})
	for i := range 30 {
		b.Publish(join(fmt.Sprint(i), fmt.Sprint("r", i%3)))
	}
	since := ID{1, 10}
	s := b.Subscribe("r1", false, &since)
	got := drain(t, b, s, 7) // 10,13,...,28 after seq 10 (event i has seq i+1)
	for _, ev := range got {
		if ev.Room != "r1" || !since.Less(ev.ID) {
			t.Fatalf("unexpected %+v", ev)
		}
	}
	old := ID{0, 5} // an earlier epoch
	if s := b.Subscribe("", true, &old); drain(t, b, s, 1)[0].Type != Reset {
		t.Fatal("id of an earlier history: want reset")
	}
}

// Concurrent publishers and a reader that resubscribes at random points:
// every event once, in id order.
func TestConcurrentPublishResume(t *testing.T) {
	b := New(Config{History: 100000, Buffer: 8, Epoch: 1})
	const per, writers = 2000, 4
	var wg sync.WaitGroup
	s := b.Subscribe("", true, nil)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				b.Publish(join(fmt.Sprint(w, "-", i), "r"))
			}
		}()
	}
	var last ID
	seen := 0
	for seen < per*writers {
		evs := drain(t, b, s, 1)
		for _, ev := range evs {
			if !last.Less(ev.ID) {
				t.Fatalf("id %v after %v", ev.ID, last)
			}
			if ev.ID.Seq != uint64(seen+1) {
				t.Fatalf("event %d has seq %d: gap", seen, ev.ID.Seq)
			}
			last = ev.ID
			seen++
		}
		if seen%7 == 0 {
			b.Unsubscribe(s)
			s = b.Subscribe("", true, &last)
		}
	}
	wg.Wait()
}

func TestDebouncer(t *testing.T) {
	var out []string
	d := NewDebouncer(100, func(ev *Event) { out = append(out, ev.Type.String()+" "+ev.User) })
	d.Offer(&Event{Type: Leave, User: "a", Room: "r"}, 1000)
	d.Offer(&Event{Type: Join, User: "a", Room: "r"}, 1050) // rejoin: both vanish
	d.Offer(&Event{Type: Leave, User: "b", Room: "r"}, 1060)
	d.Offer(&Event{Type: Join, User: "c", Room: "r"}, 1070)
	d.Flush(1159, false)
	d.Flush(1160, false)
	d.Offer(&Event{Type: Join, User: "b", Room: "r"}, 1200) // after the delay: both happen
	want := "[join c leave b join b]"
	if fmt.Sprint(out) != want {
		t.Fatalf("got %v, want %s", out, want)
	}
}

func TestIDParse(t *testing.T) {
	for _, s := range []string{"1-2", "1796135642210-0", "5"} {
		id, ok := ParseID(s)
		if !ok || (s != "5" && id.String() != s) {
			t.Fatalf("%q: %v %v", s, id, ok)
		}
	}
	for _, s := range []string{"", "-", "a-1", "1-b", "1-2-3", "-1"} {
		if _, ok := ParseID(s); ok {
			t.Fatalf("%q parsed", s)
		}
	}
}

type fakeSource struct{ evs []*Event }

func (f fakeSource) Range(after ID, n int) ([]*Event, bool, error) {
	var out []*Event
	for _, ev := range f.evs {
		if after.Less(ev.ID) && len(out) < n {
			out = append(out, ev)
		}
	}
	return out, false, nil
}

// A subscriber that came before the cluster floor was known gets the
// events the stream took between the node's start and the floor.
func TestSubscribeBeforeFloor(t *testing.T) {
	early := &Event{ID: ID{120, 0}, Type: Join, User: "early", Room: "r"}
	b := New(Config{History: 10, Epoch: 100, Source: fakeSource{[]*Event{{ID: ID{90, 0}, Type: Join, User: "old", Room: "r"}, early}}})
	s := b.Subscribe("r", false, nil)
	b.SetFloor(ID{120, 0})
	b.Append(&Event{ID: ID{130, 0}, Type: Join, User: "late", Room: "r"})
	got := drain(t, b, s, 2)
	if got[0].User != "early" || got[1].User != "late" {
		t.Fatalf("got %s, %s; want early, late", got[0].User, got[1].User)
	}
}

// An event whose state holds bytes that are not UTF-8 (stored by an earlier
// release, or by another node through Redis) renders as valid UTF-8 JSON,
// the bad bytes read as U+FFFD: a browser drops a socket on one bad byte.
func TestEventJSONInvalidUTF8State(t *testing.T) {
	e := &Event{Type: Join, User: "u", Room: "r", At: 1, State: json.RawMessage("{\"n\":\"a\xff\xfeb\",\"\xc3\":1}")}
	b := e.JSON()
	if !utf8.Valid(b) {
		t.Fatalf("event JSON not valid UTF-8: %q", b)
	}
	var got struct{ State map[string]any }
	if err := json.Unmarshal(b, &got); err != nil || got.State["n"] != "a\uFFFDb" || got.State["\uFFFD"] != float64(1) {
		t.Fatalf("event %q (%v): want the state with U+FFFD in place of the bad bytes", b, err)
	}
}

// The history is bounded in bytes as well as in events: big states evict
// the oldest events (a resume from them gets a reset), and the held bytes
// never pass the bound.
func TestHistoryBytesBound(t *testing.T) {
	const bound = 20_000
	b := New(Config{History: 1000, HistoryBytes: bound})
	state := json.RawMessage(`{"s":"` + strings.Repeat("x", 1000) + `"}`)
	var first, recent ID
	for i := range 100 {
		ev := &Event{Type: Join, User: fmt.Sprintf("u%d", i), Room: "r", At: 1, State: state}
		b.Publish(ev)
		if i == 0 {
			first = ev.ID
		}
		if i == 97 {
			recent = ev.ID
		}
		if st := b.Stats(); st.HistoryBytes > bound {
			t.Fatalf("after %d events: %d bytes held, bound %d", i+1, st.HistoryBytes, bound)
		}
	}
	st := b.Stats()
	if st.Held == 0 || st.Held >= 100 || st.HistoryBytes < bound/2 {
		t.Fatalf("stats %+v: want some, not all, of 100 events held", st)
	}
	old := b.Subscribe("r", false, &first)
	if evs := drain(t, b, old, 1); evs[0].Type != Reset {
		t.Fatalf("resume from an evicted id: %+v, want a reset", evs[0])
	}
	s := b.Subscribe("r", false, &recent)
	if evs := drain(t, b, s, 2); evs[0].User != "u98" || evs[1].User != "u99" {
		t.Fatalf("resume from a held id: %v %v", evs[0].User, evs[1].User)
	}
}
