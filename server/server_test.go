package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

const testSecret = "k1 0123456789abcdef0123456789abcdef-test-secret-one\nk2 fedcba9876543210fedcba9876543210-test-secret-two\n"

// node is the black-box harness's running server.
type node = servertest.Node

// startNode runs a server on free loopback ports and stops it when the test ends.
func startNode(t *testing.T, mod func(*server.Config)) *node { return servertest.Start(t, mod) }

// withSecret writes the test keyring and points the config at it.
func withSecret(t *testing.T) func(*server.Config) { return servertest.WithSecret(t, testSecret) }

func hb(user, room, tok string) wire.Item {
	return wire.Item{Op: wire.OpHeartbeat, User: []byte(user), Room: []byte(room), Token: []byte(tok)}
}

func TestHeartbeatsAndQueries(t *testing.T) {
	n := startNode(t, nil)
	// HTTP POST, HTTP GET and UDP heartbeats for several users and rooms.
	for _, u := range []string{"alice", "bob", "carol"} {
		if code := n.PostHeartbeat(u, "lobby", ""); code != 200 {
			t.Fatalf("heartbeat %s: %d", u, code)
		}
	}
	var hbResp struct {
		IntervalMs int64 `json:"interval_ms"`
		TTLMs      int64 `json:"ttl_ms"`
	}
	if code := n.Do("GET", "/v1/heartbeat?user=dave&room=game%2F1", "", &hbResp); code != 200 || hbResp.IntervalMs != 60000 || hbResp.TTLMs != 150000 {
		t.Fatalf("GET heartbeat: %d %+v", code, hbResp)
	}
	uc := n.UDPClient()
	reply := uc.Send(uc.Request(7, true, hb("erin", "game/1", ""), hb("alice", "game/1", ""), hb("frank", "", "")), time.Second)
	var r wire.Reply
	if err := r.Decode(reply); err != nil {
		t.Fatalf("udp reply %x: %v", reply, err)
	}
	if r.Seq != 7 || len(r.Statuses()) != 3 || r.Statuses()[0] != wire.StatusOK || r.Statuses()[2] != wire.StatusOK {
		t.Fatalf("udp reply: %+v %v", r, r.Statuses())
	}
	if !r.HasTiming || r.IntervalMs != 60000 || r.TTLMs != 150000 {
		t.Fatalf("udp reply timing: %+v", r)
	}
	// A datagram without the ack flag is applied and not answered.
	if got := uc.Send(uc.Request(8, false, hb("gina", "lobby", "")), 200*time.Millisecond); got != nil {
		t.Fatalf("reply to a datagram that did not ask: %x", got)
	}
	testkit.Eventually(t, 10*time.Second, "gina online", func() bool { return n.User("gina").Online })

	alice := n.User("alice")
	sort.Strings(alice.Rooms)
	if !alice.Online || strings.Join(alice.Rooms, ",") != "game/1,lobby" || alice.LastSeen == nil {
		t.Fatalf("alice: %+v", alice)
	}
	if _, err := time.Parse(time.RFC3339, *alice.LastSeen); err != nil || !strings.HasSuffix(*alice.LastSeen, "Z") {
		t.Fatalf("last_seen %q: %v", *alice.LastSeen, err)
	}
	if nobody := n.User("nobody"); nobody.Online || nobody.LastSeen != nil || len(nobody.Rooms) != 0 {
		t.Fatalf("nobody: %+v", nobody)
	}
	var bulk struct{ Users []servertest.User }
	if code := n.Do("POST", "/v1/status", `{"users":["alice","nobody","frank"]}`, &bulk); code != 200 || len(bulk.Users) != 3 {
		t.Fatalf("bulk status: %d %+v", code, bulk)
	}
	if !bulk.Users[0].Online || bulk.Users[1].Online || !bulk.Users[2].Online || bulk.Users[2].User != "frank" {
		t.Fatalf("bulk status: %+v", bulk)
	}
	if got, _ := n.RoomOnline("lobby"); got != 4 {
		t.Fatalf("lobby online = %d, want 4", got)
	}
	if got, _ := n.RoomOnline("game/1"); got != 3 {
		t.Fatalf("game/1 online = %d, want 3", got)
	}
	var top struct {
		Rooms []struct {
			Room   string
			Online int
		}
	}
	if code := n.Do("GET", "/v1/rooms?top=2", "", &top); code != 200 || len(top.Rooms) != 2 || top.Rooms[0].Room != "lobby" || top.Rooms[0].Online != 4 || top.Rooms[1].Room != "game/1" {
		t.Fatalf("top rooms: %d %+v", code, top)
	}
	if s := n.Stats(); s.OnlineUsers != 7 || s.Sessions != 8 || s.Rooms != 2 {
		t.Fatalf("stats: %+v", s)
	}
	if v := n.Metric(`presenced_heartbeats_total{outcome="ok",transport="udp"}`); v != 4 {
		t.Fatalf("udp ok heartbeats metric = %v, want 4", v)
	}
}

func TestMembersPagingEveryMemberOnce(t *testing.T) {
	n := startNode(t, nil)
	const users = 250
	var batch strings.Builder
	batch.WriteString(`{"heartbeats":[`)
	for i := range users {
		if i > 0 {
			batch.WriteString(",")
		}
		fmt.Fprintf(&batch, `{"user":"u%03d","room":"big"}`, i)
	}
	batch.WriteString("]}")
	var res struct {
		Accepted int
		Rejected []any
	}
	if code := n.Do("POST", "/v1/heartbeats", batch.String(), &res); code != 200 || res.Accepted != users || len(res.Rejected) != 0 {
		t.Fatalf("batch: %d %+v", code, res)
	}
	seen := map[string]int{}
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("paging does not end")
		}
		var page struct {
			Members []struct {
				User     string
				LastSeen string `json:"last_seen"`
			}
			NextCursor *string `json:"next_cursor"`
		}
		path := "/v1/rooms/big/members?limit=40"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if code := n.Do("GET", path, "", &page); code != 200 {
			t.Fatalf("members: %d", code)
		}
		if len(page.Members) > 40 {
			t.Fatalf("page of %d > limit", len(page.Members))
		}
		for _, m := range page.Members {
			seen[m.User]++
		}
		// Churn between pages: others join and leave; they may or may not show.
		n.PostHeartbeat(fmt.Sprintf("churn%d", pages), "big", "")
		n.Do("POST", "/v1/leave", fmt.Sprintf(`{"user":"churn%d","room":"big"}`, pages-1), nil)
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
	}
	for i := range users {
		if u := fmt.Sprintf("u%03d", i); seen[u] != 1 {
			t.Fatalf("%s seen %d times, want exactly once", u, seen[u])
		}
	}
	// A cursor no page handed out is refused, not read as an empty page.
	for _, bad := range []string{"!!", "zzz", "2s", "s", "s0", "c"} {
		var e struct{ Error string }
		if code := n.Do("GET", "/v1/rooms/big/members?cursor="+bad, "", &e); code != 400 || !strings.Contains(e.Error, "cursor") {
			t.Fatalf("cursor=%s: %d %q, want 400 naming cursor", bad, code, e.Error)
		}
	}
	if code := n.Do("GET", "/v1/rooms/big/members?limit=1001", "", nil); code != 400 {
		t.Fatalf("limit over max: %d, want 400", code)
	}
}

func TestExpiryAndLeave(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.TTL = time.Second
		c.Interval = 200 * time.Millisecond
		c.SweepInterval = 20 * time.Millisecond
	})
	n.PostHeartbeat("a", "r1", "")
	n.PostHeartbeat("a", "r2", "")
	n.PostHeartbeat("b", "r1", "")
	n.PostHeartbeat("c", "r1", "")
	if got, _ := n.RoomOnline("r1"); got != 3 {
		t.Fatalf("r1 = %d", got)
	}
	// Explicit leave of one room, then of all rooms.
	var left struct{ Left int }
	if code := n.Do("POST", "/v1/leave", `{"user":"a","room":"r2"}`, &left); code != 200 || left.Left != 1 {
		t.Fatalf("leave one: %d %+v", code, left)
	}
	if code := n.Do("POST", "/v1/leave", `{"user":"b"}`, &left); code != 200 || left.Left != 1 {
		t.Fatalf("leave all: %d %+v", code, left)
	}
	if got, _ := n.RoomOnline("r1"); got != 2 {
		t.Fatalf("r1 after leave = %d, want 2", got)
	}
	// Keep c alive; a stops heartbeating and expires.
	stop := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(stop) {
		n.PostHeartbeat("c", "r1", "")
		time.Sleep(100 * time.Millisecond) // a real clock: c heartbeats past a's 1 s TTL
	}
	if got, _ := n.RoomOnline("r1"); got != 1 {
		t.Fatalf("r1 after a's expiry = %d, want 1", got)
	}
	if n.User("a").Online || !n.User("c").Online {
		t.Fatalf("a should be offline and c online")
	}
	if v := n.Metric(`presenced_leaves_total{reason="timeout"}`); v != 1 {
		t.Fatalf("timeout leaves = %v, want 1", v)
	}
	if v := n.Metric(`presenced_leaves_total{reason="left"}`); v != 2 {
		t.Fatalf("left leaves = %v, want 2", v)
	}
}

func TestEventStream(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.LeaveDelay = 0
		c.TTL = 300 * time.Millisecond
		c.Interval = 100 * time.Millisecond
		c.SweepInterval = 20 * time.Millisecond
	})
	resp, err := http.Get(n.Base + "/v1/events?room=r1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	n.PostHeartbeat("a", "r1", "")
	n.PostHeartbeat("a", "other", "")
	n.Do("POST", "/v1/leave", `{"user":"a","room":"r1"}`, nil)
	n.PostHeartbeat("b", "r1", "")
	type event struct {
		name                   string
		User, Room, At, Reason string
	}
	var got []event
	rd := bufio.NewReader(resp.Body)
	var name string
	deadline := time.AfterFunc(5*time.Second, func() { resp.Body.Close() })
	defer deadline.Stop()
	for len(got) < 4 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			var ev event
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
				t.Fatal(err)
			}
			ev.name = name
			if name == "occupied" || name == "vacated" {
				continue // room events: TestEventStreamOccupiedVacated
			}
			got = append(got, ev)
		}
	}
	want := []string{"join a ", "leave a left", "join b ", "leave b timeout"}
	for i, ev := range got {
		if s := ev.name + " " + ev.User + " " + ev.Reason; s != want[i] || ev.Room != "r1" {
			t.Fatalf("event %d = %+v, want %q in r1", i, ev, want[i])
		}
		if _, err := time.Parse(time.RFC3339, ev.At); err != nil {
			t.Fatalf("event time %q: %v", ev.At, err)
		}
	}
}

func TestBadHTTPInputChangesNothing(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.MaxBatch = 3; c.MaxBodyBytes = 4096 })
	n.PostHeartbeat("keep", "lobby", "")
	before := n.Stats()
	long := strings.Repeat("x", 129)
	cases := []struct {
		name, method, path, body string
		code                     int
		errHas                   string
	}{
		{"malformed json", "POST", "/v1/heartbeat", `{"user":"a"`, 400, "JSON"},
		{"not an object", "POST", "/v1/heartbeat", `["a"]`, 400, "JSON"},
		{"missing user", "POST", "/v1/heartbeat", `{"room":"r"}`, 400, "user"},
		{"empty user", "POST", "/v1/heartbeat", `{"user":"","room":"r"}`, 400, "user"},
		{"user not a string", "POST", "/v1/heartbeat", `{"user":5}`, 400, "user"},
		{"over-long user", "POST", "/v1/heartbeat", `{"user":"` + long + `"}`, 400, "user"},
		{"over-long room", "POST", "/v1/heartbeat", `{"user":"a","room":"` + long + `"}`, 400, "room"},
		{"control char in user", "POST", "/v1/heartbeat", `{"user":"a\u0001b"}`, 400, "user"},
		{"control char in room", "POST", "/v1/heartbeat", `{"user":"a","room":"r\n"}`, 400, "room"},
		{"GET without user", "GET", "/v1/heartbeat?room=r", "", 400, "user"},
		{"body over limit", "POST", "/v1/heartbeat", `{"user":"a","pad":"` + strings.Repeat("p", 5000) + `"}`, 413, "max-body-bytes"},
		{"batch over limit", "POST", "/v1/heartbeats", `{"heartbeats":[{"user":"a"},{"user":"b"},{"user":"c"},{"user":"d"}]}`, 413, "max-batch"},
		{"batch not an array", "POST", "/v1/heartbeats", `{"heartbeats":{}}`, 400, "heartbeats"},
		{"batch malformed", "POST", "/v1/heartbeats", `{"heartbeats":[{"user":"a"},]}`, 400, "JSON"},
		{"wrong method", "DELETE", "/v1/heartbeat", "", 405, "method"},
		{"wrong method on query", "POST", "/v1/stats", "", 405, "method"},
		{"unknown path", "GET", "/v2/nothing", "", 404, "unknown path"},
		{"unknown subpath", "GET", "/v1/rooms/lobby/other", "", 404, "unknown path"},
		{"leave malformed", "POST", "/v1/leave", `{"user":`, 400, "JSON"},
		{"leave bad user", "POST", "/v1/leave", `{"user":""}`, 400, "user"},
		{"status bad id", "POST", "/v1/status", `{"users":["ok",""]}`, 400, "users[1]"},
		{"status malformed", "POST", "/v1/status", `{"users":[1]}`, 400, "users"},
		{"lone surrogate", "POST", "/v1/heartbeat", `{"user":"a\ud800\u0041"}`, 400, "JSON"},
		{"lone low surrogate", "POST", "/v1/heartbeat", `{"user":"a\udc00"}`, 400, "JSON"},
		{"lone surrogate in batch", "POST", "/v1/heartbeats", `{"heartbeats":[{"user":"\ud800"}]}`, 400, "JSON"},
		{"lone surrogate in leave", "POST", "/v1/leave", `{"user":"\ud800\u0042"}`, 400, "JSON"},
		{"lone surrogate in status", "POST", "/v1/status", `{"users":["\ud800"]}`, 400, "JSON"},
		{"invalid UTF-8 in status", "POST", "/v1/status", "{\"users\":[\"\xff\"]}", 400, "JSON"},
		{"top over max", "GET", "/v1/rooms?top=1001", "", 400, "top"},
		{"bad path id", "GET", "/v1/users/%C3%28", "", 400, "user"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out struct{ Error string }
			var dst any = &out
			if tc.code == 200 {
				dst = nil
			}
			code := n.Do(tc.method, tc.path, tc.body, dst)
			if code != tc.code {
				t.Fatalf("status %d, want %d (%+v)", code, tc.code, out)
			}
			if tc.code != 200 && !strings.Contains(out.Error, tc.errHas) {
				t.Fatalf("error %q does not name %q", out.Error, tc.errHas)
			}
			if after := n.Stats(); after != before {
				t.Fatalf("state changed: %+v -> %+v", before, after)
			}
		})
	}
	// A batch mixing good and bad items: the good ones count.
	var res struct {
		Accepted int
		Rejected []struct {
			Index int
			Error string
		}
	}
	code := n.Do("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"g1","room":"r"},{"user":""},{"user":"g2","room":"`+long+`"},{"user":"g3"}]}`, nil)
	if code != 413 {
		t.Fatalf("4 items with max-batch 3: %d", code)
	}
	code = n.Do("POST", "/v1/heartbeats", `{"heartbeats":[{"user":"g1","room":"r"},{"user":""},{"user":"g2","room":7}]}`, &res)
	if code != 200 || res.Accepted != 1 || len(res.Rejected) != 2 || res.Rejected[0].Index != 1 || res.Rejected[1].Index != 2 ||
		!strings.Contains(res.Rejected[0].Error, "user") || !strings.Contains(res.Rejected[1].Error, "room") {
		t.Fatalf("mixed batch: %d %+v", code, res)
	}
	if !n.User("g1").Online {
		t.Fatal("good item of a mixed batch was not applied")
	}
}

func TestStatusLimit(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.MaxStatusUsers = 2 })
	var out struct{ Error string }
	if code := n.Do("POST", "/v1/status", `{"users":["a","b","c"]}`, &out); code != 413 || !strings.Contains(out.Error, "max-status-users") {
		t.Fatalf("status over limit: %d %q", code, out.Error)
	}
}

func TestTokensHTTP(t *testing.T) {
	n := startNode(t, withSecret(t))
	good, _ := n.Keys.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	roomTok, _ := n.Keys.Mint("k2", "alice", "r1", true, time.Now().Add(time.Hour))
	expired, _ := n.Keys.Mint("", "alice", "", false, time.Now().Add(-time.Minute))
	other, err := token.ParseKeyring([]byte("k9 zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n"))
	if err != nil {
		t.Fatal(err)
	}
	unknownKey, _ := other.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	tampered := []byte(good)
	tampered[len(tampered)-3] ^= 1
	cases := []struct {
		name, user, room, tok string
		code                  int
	}{
		{"missing", "alice", "r1", "", 401},
		{"garbage", "alice", "r1", "not-a-token", 401},
		{"expired", "alice", "r1", expired, 401},
		{"unknown key", "alice", "r1", unknownKey, 401},
		{"tampered", "alice", "r1", string(tampered), 401},
		{"other user", "bob", "r1", good, 401},
		{"room-bound, other room", "alice", "r2", roomTok, 401},
		{"good", "alice", "r1", good, 200},
		{"room-bound", "alice", "r1", roomTok, 200},
	}
	for _, tc := range cases {
		before := n.Stats()
		if code := n.PostHeartbeat(tc.user, tc.room, tc.tok); code != tc.code {
			t.Fatalf("%s: %d, want %d", tc.name, code, tc.code)
		}
		if tc.code != 200 && n.Stats() != before {
			t.Fatalf("%s changed state", tc.name)
		}
	}
	if code := n.Do("POST", "/v1/leave", `{"user":"alice"}`, nil); code != 401 {
		t.Fatalf("leave without token: %d", code)
	}
}

func TestUDPBadDatagramsDroppedAndCounted(t *testing.T) {
	n := startNode(t, nil)
	uc := n.UDPClient()
	good := uc.Request(1, true, hb("u", "r", ""))
	oversized := append(uc.Request(2, true, hb("u", "r", "")), make([]byte, wire.MaxDatagram)...)
	wrongVersion := append([]byte(nil), good...)
	wrongVersion[1] = 9
	random := []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	for name, b := range map[string][]byte{
		"truncated":     good[:len(good)-1],
		"header only":   good[:wire.HeaderLen],
		"oversized":     oversized,
		"wrong version": wrongVersion,
		"random":        random,
		"empty-ish":     {0x50},
		"trailing byte": append(append([]byte(nil), good...), 0),
	} {
		if got := uc.Send(b, 150*time.Millisecond); got != nil {
			t.Fatalf("%s: got a reply %x", name, got)
		}
	}
	if s := n.Stats(); s.Sessions != 0 {
		t.Fatalf("bad datagrams changed state: %+v", s)
	}
	for _, reason := range []string{"truncated", "too_large", "bad_version", "bad_magic", "too_short", "trailing"} {
		if v := n.Metric(`presenced_udp_dropped_datagrams_total{reason="` + reason + `"}`); v < 1 {
			t.Fatalf("drop reason %s counted %v", reason, v)
		}
	}
	if got := uc.Send(good, time.Second); len(got) == 0 || len(got) > len(good) {
		t.Fatalf("good datagram: reply %x (request %d bytes)", got, len(good))
	}
}

func TestTokensUDP(t *testing.T) {
	n := startNode(t, withSecret(t))
	uc := n.UDPClient()
	good, _ := n.Keys.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	expired, _ := n.Keys.Mint("", "alice", "", false, time.Now().Add(-time.Minute))
	// Unauthenticated datagrams get no reply and change nothing.
	tampered := []byte(good)
	tampered[len(tampered)-5] ^= 1
	for _, tok := range []string{"", "garbage", string(tampered)} {
		if got := uc.Send(uc.Request(1, true, hb("alice", "r", tok)), 150*time.Millisecond); got != nil {
			t.Fatalf("token %q: reply %x", tok, got)
		}
	}
	// A genuine but expired token is answered token_expired: its signature
	// proves the sender held it, and its expiry is in its text anyway.
	var er wire.Reply
	if err := er.Decode(uc.Send(uc.Request(1, true, hb("alice", "r", expired)), time.Second)); err != nil ||
		len(er.Statuses()) != 1 || er.Statuses()[0] != wire.StatusTokenExpired {
		t.Fatalf("expired token: reply %v %v, want token_expired", err, er.Statuses())
	}
	if n.Stats().Sessions != 0 {
		t.Fatal("unauthenticated datagrams changed state")
	}
	// Counted as no genuine token (bad_token), not as unauthenticated,
	// which PROTOCOL.md keeps for v2 without a secret or of an unknown key.
	if v := n.Metric(`presenced_udp_dropped_datagrams_total{reason="bad_token"}`); v != 3 {
		t.Fatalf("bad_token drops = %v, want 3", v)
	}
	if v := n.Metric(`presenced_udp_dropped_datagrams_total{reason="unauthenticated"}`); v != 0 {
		t.Fatalf("unauthenticated drops = %v, want 0", v)
	}
	req := uc.Request(2, true, hb("alice", "r", good), hb("bob", "r", good))
	got := uc.Send(req, time.Second)
	var r wire.Reply
	if err := r.Decode(got); err != nil || r.Statuses()[0] != wire.StatusOK || r.Statuses()[1] != wire.StatusBadToken {
		t.Fatalf("mixed datagram reply %x: %v %v", got, err, r.Statuses())
	}
	if len(got) > len(req) {
		t.Fatalf("reply %d bytes > request %d", len(got), len(req))
	}
	if !n.User("alice").Online || n.User("bob").Online {
		t.Fatal("token for alice must refresh alice only")
	}
	// Leave over UDP.
	leave := wire.Item{Op: wire.OpLeave, User: []byte("alice"), Token: []byte(good)}
	if got := uc.Send(uc.Request(3, true, leave), time.Second); got == nil {
		t.Fatal("no ack for leave")
	}
	if n.User("alice").Online {
		t.Fatal("alice still online after UDP leave")
	}
}

func TestReadyAndHealth(t *testing.T) {
	n := startNode(t, nil)
	if code := n.Do("GET", "/livez", "", nil); code != 200 {
		t.Fatalf("livez %d", code)
	}
	if code := n.Do("GET", "/readyz", "", nil); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	resp, err := http.Get(n.Base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"# TYPE presenced_heartbeats_total counter", "presenced_sessions ", "presenced_http_request_duration_seconds_bucket", "presenced_udp_dropped_datagrams_total"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}

// Without --data-dir, last_seen still survives the session: after a leave of
// one room, a leave of all rooms and a timeout, it is the last heartbeat.
// With a data dir the last-seen of a user who just left is answered at
// once, not only after the log's next commit.
func TestLastSeenRightAfterLeaveWithDataDir(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.DataDir = t.TempDir()
		c.Persist.FsyncInterval = time.Hour // no commit during the test
	})
	for i := range 20 {
		u := fmt.Sprint("left-", i)
		if code := n.PostHeartbeat(u, "lobby", ""); code != 200 {
			t.Fatalf("heartbeat: %d", code)
		}
		n.Do("POST", "/v1/leave", `{"user":"`+u+`","room":"lobby"}`, nil)
		if us := n.User(u); us.Online || us.LastSeen == nil {
			t.Fatalf("%s right after its leave: online %v, last_seen %v; want offline with a last_seen", u, us.Online, us.LastSeen)
		}
	}
}

func TestLastSeenWithoutDataDir(t *testing.T) {
	n := startNode(t, func(c *server.Config) {
		c.TTL = time.Second
		c.Interval = 200 * time.Millisecond
		c.SweepInterval = 20 * time.Millisecond
		c.LastSeenMemoryUsers = 3
	})
	before := time.Now().Add(-time.Second)
	for _, u := range []string{"one", "all", "gone"} {
		if code := n.PostHeartbeat(u, "lobby", ""); code != 200 {
			t.Fatalf("heartbeat %s: %d", u, code)
		}
	}
	lastSeen := func(u string) time.Time {
		t.Helper()
		us := n.User(u)
		if us.Online || us.LastSeen == nil {
			t.Fatalf("%s: online %v, last_seen %v; want offline with a last_seen", u, us.Online, us.LastSeen)
		}
		at, err := time.Parse(time.RFC3339, *us.LastSeen)
		if err != nil || at.Before(before) || at.After(time.Now()) {
			t.Fatalf("%s: last_seen %s (%v), want the last heartbeat", u, *us.LastSeen, err)
		}
		return at
	}
	n.Do("POST", "/v1/leave", `{"user":"one","room":"lobby"}`, nil)
	lastSeen("one")
	n.Do("POST", "/v1/leave", `{"user":"all"}`, nil)
	lastSeen("all")
	testkit.Eventually(t, 5*time.Second, "gone to time out", func() bool { return !n.User("gone").Online })
	lastSeen("gone")
	// The table is bounded: a fourth user replaces one of the three.
	n.PostHeartbeat("more", "", "")
	n.Do("POST", "/v1/leave", `{"user":"more"}`, nil)
	if v := n.Metric("presenced_last_seen_memory_users"); v != 3 {
		t.Fatalf("presenced_last_seen_memory_users = %v, want 3", v)
	}
	if v := n.Metric("presenced_last_seen_memory_evictions_total"); v != 1 {
		t.Fatalf("presenced_last_seen_memory_evictions_total = %v, want 1", v)
	}
}

// A datagram with one good item does not tell how other users' tokens fail:
// each of them reads bad_token, as if sent alone it would get silence; only
// the sender's own user gets the precise reason.
func TestUDPReplyIsNoTokenOracle(t *testing.T) {
	n := startNode(t, withSecret(t))
	uc := n.UDPClient()
	hour := time.Now().Add(time.Hour)
	good, _ := n.Keys.Mint("", "alice", "", false, hour)
	aliceRoom, _ := n.Keys.Mint("", "alice", "lobby", true, hour)
	bobRoom, _ := n.Keys.Mint("", "bob", "lobby", true, hour)
	carolExpired, _ := n.Keys.Mint("", "carol", "", false, time.Now().Add(-time.Minute))
	unknownKey := strings.Replace(good, "k1.", "k9.", 1)
	daveUnknown := strings.Replace(unknownKey, "alice", "dave", 1)
	req := uc.Request(5, true,
		hb("alice", "r", good),
		hb("alice", "", aliceRoom), // alice's own room-bound token without a room
		hb("bob", "", bobRoom),     // bob's room-bound token without a room
		hb("carol", "r", carolExpired),
		hb("dave", "r", daveUnknown),
		hb("erin", "r", "garbage"),
	)
	var r wire.Reply
	if err := r.Decode(uc.Send(req, time.Second)); err != nil {
		t.Fatalf("no reply to a datagram with a good item: %v", err)
	}
	want := []wire.Status{wire.StatusOK, wire.StatusWrongRoom, wire.StatusBadToken, wire.StatusTokenExpired, wire.StatusBadToken, wire.StatusBadToken}
	if fmt.Sprint(r.Statuses()) != fmt.Sprint(want) {
		t.Fatalf("statuses %v, want %v", r.Statuses(), want)
	}
}

// With --fsync=always a UDP ack comes once the heartbeat is synced, sent by
// the ack queue on gnet's socket after the callback returned; shutdown
// stops the queue before the sockets close.
func TestUDPAckFsyncAlways(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.DataDir = t.TempDir(); c.FsyncMode = "always" })
	uc := n.UDPClient()
	for seq := range uint32(5) {
		var r wire.Reply
		if err := r.Decode(uc.Send(uc.Request(seq, true, hb(fmt.Sprint("u", seq), "r", "")), 2*time.Second)); err != nil ||
			r.Seq != seq || r.Statuses()[0] != wire.StatusOK {
			t.Fatalf("ack %d under fsync=always: %v %+v", seq, err, r)
		}
	}
	if !n.User("u4").Online {
		t.Fatal("acked heartbeat not applied")
	}
}
