package server_test

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/server"
)

// A data dir written by the release before sessions had connections
// (commit 59627ab) replays unchanged: every session with its room, state
// and last-seen, the last-seen of users who left, and the totals. Each
// session comes back as one default connection (conn "") with the
// session's state and last-seen.
//
// How the fixtures in testdata were made (once; the test never runs the old
// release). `go build` at 59627ab, then
//
//	presenced serve --data-dir D --http-addr A --udp-addr A --udp-loops 1 \
//	    --ttl 876000h --heartbeat-min-gap 0 [--fsync always]
//
// (a 100-year --ttl, so the sessions are still live whenever this runs;
// there is no upper limit on --ttl), then over HTTP, in this order:
//
//	POST /v1/heartbeat  alice/lobby   state {"status":"away","note":"☕ café — 日本語 😀"}
//	POST /v1/heartbeat  alice/kitchen (no state)
//	POST /v1/heartbeat  alice/garage  state {"n":1,"ok":true,"list":[1,"two",null]}
//	POST /v1/heartbeat  bob/lobby     state bobState
//	POST /v1/heartbeat  carol (no room) state {"typing":true}
//	POST /v1/heartbeat  dave/kitchen  state {"v":1}, then again with {"v":2}
//	POST /v1/heartbeat  eve/lobby     state {"bye":"soon"}
//	POST /v1/heartbeat  frank/garage, frank/lobby
//	POST /v1/heartbeat  grace/lobby   state {"x":1}, then again with "state":null
//	POST /v1/heartbeat  zoë/"café ☕" state {"name":"Zoë Ünïcödé"}
//	POST /v1/heartbeats hank/attic, ivy/attic state {"k":"v"}, ivy (no room, no state)
//	POST /v1/leave      eve/lobby; frank/garage
//	POST /v1/heartbeat  judy/lobby, then POST /v1/leave judy (all rooms)
//	POST /v1/heartbeat  bob/lobby     state bobState (the same again)
//
// then checked the old release's own answers (the last-seen times below
// are copied from them) and stopped it. The data dir was packed with
// `tar --sort=name --owner=0 --group=0 -czf`:
//
//   - log-v0-before-connections.tar.gz: stopped with SIGTERM (clean close;
//     the records are in Pebble's WAL, no sstable).
//   - log-v0-before-connections-kill9.tar.gz: run with --fsync always and
//     stopped with kill -9 after the last heartbeat's answer (its fsync
//     covers everything before it): the store was not closed and its
//     "unclean" marker is still set.
func TestReplayLogFromBeforeConnections(t *testing.T) {
	for _, fx := range []struct {
		name, file string
		// seen is the last-seen the old release answered: "user" for the
		// user, "user/room" for one session.
		seen map[string]string
	}{
		{"sigterm", "log-v0-before-connections.tar.gz", map[string]string{
			"alice": "2026-12-07T21:58:29.696Z", "alice/garage": "2026-12-07T21:58:29.696Z",
			"alice/kitchen": "2026-12-07T21:58:29.666Z", "alice/lobby": "2026-12-07T21:58:29.532Z",
			"bob": "2026-12-07T21:58:31.367Z", "bob/lobby": "2026-12-07T21:58:31.367Z",
			"carol": "2026-12-07T21:58:29.924Z", "carol/": "2026-12-07T21:58:29.924Z",
			"dave": "2026-12-07T21:58:30.180Z", "dave/kitchen": "2026-12-07T21:58:30.180Z",
			"eve":   "2026-12-07T21:58:30.212Z",
			"frank": "2026-12-07T21:58:30.415Z", "frank/lobby": "2026-12-07T21:58:30.415Z",
			"grace": "2026-12-07T21:58:30.603Z", "grace/lobby": "2026-12-07T21:58:30.603Z",
			"zoë": "2026-12-07T21:58:30.752Z", "zoë/café ☕": "2026-12-07T21:58:30.752Z",
			"hank": "2026-12-07T21:58:30.801Z", "hank/attic": "2026-12-07T21:58:30.801Z",
			"ivy": "2026-12-07T21:58:30.801Z", "ivy/attic": "2026-12-07T21:58:30.801Z",
			"judy": "2026-12-07T21:58:31.104Z",
		}},
		{"kill9", "log-v0-before-connections-kill9.tar.gz", map[string]string{
			"alice": "2026-12-07T21:58:02.138Z", "alice/garage": "2026-12-07T21:58:02.138Z",
			"alice/kitchen": "2026-12-07T21:58:02.083Z", "alice/lobby": "2026-12-07T21:58:02.016Z",
			"bob": "2026-12-07T21:58:03.590Z", "bob/lobby": "2026-12-07T21:58:03.590Z",
			"carol": "2026-12-07T21:58:02.251Z", "carol/": "2026-12-07T21:58:02.251Z",
			"dave": "2026-12-07T21:58:02.342Z", "dave/kitchen": "2026-12-07T21:58:02.342Z",
			"eve":   "2026-12-07T21:58:02.382Z",
			"frank": "2026-12-07T21:58:02.689Z", "frank/lobby": "2026-12-07T21:58:02.689Z",
			"grace": "2026-12-07T21:58:02.777Z", "grace/lobby": "2026-12-07T21:58:02.777Z",
			"zoë": "2026-12-07T21:58:02.823Z", "zoë/café ☕": "2026-12-07T21:58:02.823Z",
			"hank": "2026-12-07T21:58:02.993Z", "hank/attic": "2026-12-07T21:58:02.993Z",
			"ivy": "2026-12-07T21:58:02.993Z", "ivy/attic": "2026-12-07T21:58:02.993Z",
			"judy": "2026-12-07T21:58:03.380Z",
		}},
	} {
		t.Run(fx.name, func(t *testing.T) {
			dir := t.TempDir()
			untarGz(t, filepath.Join("testdata", fx.file), dir)
			// The second start reads the log as the first one left it.
			for start := 1; start <= 2; start++ {
				n := servertest.Start(t, func(c *server.Config) {
					*c = storeConfig(dir)
					// The users who left were last seen in 2026.
					c.Persist.LastSeenRetention = 100 * 365 * 24 * time.Hour
				})
				checkOldLog(t, n, fx.seen, start)
				if err := n.Shutdown(); err != nil {
					t.Fatalf("start %d: %v", start, err)
				}
			}
		})
	}
}

// bobState is a state with escapes and a multi-code-point emoji (woman,
// zero-width joiner, laptop), kept byte for byte as it was sent.
const bobState = `{"emoji":"👩` + "\u200d" + `💻","nested":{"a":[1,2,{"b":null}]},"esc":"quote\" backslash\\ \u00e9"}`

// oldLogSessions are the live sessions of the fixtures that GET
// /v1/users lists, sorted by user and room; state "null" is none. ivy also
// has a room-less session without a state, which is counted but not
// listed; eve and judy left.
var oldLogSessions = []struct{ user, room, state string }{
	{"alice", "garage", `{"n":1,"ok":true,"list":[1,"two",null]}`},
	{"alice", "kitchen", "null"},
	{"alice", "lobby", `{"status":"away","note":"☕ café — 日本語 😀"}`},
	{"bob", "lobby", bobState},
	{"carol", "", `{"typing":true}`},
	{"dave", "kitchen", `{"v":2}`},
	{"frank", "lobby", "null"},
	{"grace", "lobby", "null"},
	{"hank", "attic", "null"},
	{"ivy", "attic", `{"k":"v"}`},
	{"zoë", "café ☕", `{"name":"Zoë Ünïcödé"}`},
}

// oldLogSession is one session of an answer, its state as raw JSON.
type oldLogSession struct {
	Room     string // the user in a members answer
	State    string
	LastSeen string
	Conns    string // its "connections", as fmtConns writes them
}

// oldLogConn is one entry of a session's "connections".
type oldLogConn struct {
	Conn     string          `json:"conn"`
	State    json.RawMessage `json:"state"`
	LastSeen string          `json:"last_seen"`
}

func fmtConns(cs []oldLogConn) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "[%q %s %s]", c.Conn, c.State, c.LastSeen)
	}
	return b.String()
}

// oldLogWant is a session of the fixture as the answers show it: one
// default connection with the session's state and last-seen.
func oldLogWant(room, state, lastSeen string) oldLogSession {
	return oldLogSession{Room: room, State: state, LastSeen: lastSeen,
		Conns: fmtConns([]oldLogConn{{State: json.RawMessage(state), LastSeen: lastSeen}})}
}

// oldLogUser is the part of GET /v1/users/{user} the fixture determines.
type oldLogUser struct {
	User     string
	Online   bool
	Rooms    []string
	Sessions []oldLogSession
	LastSeen string
}

func checkOldLog(t *testing.T, n *servertest.Node, seen map[string]string, start int) {
	t.Helper()
	// The expected answers, built from oldLogSessions and seen.
	users := map[string]*oldLogUser{}
	members := map[string][]oldLogSession{} // room -> sessions, Room holding the user
	for _, s := range oldLogSessions {
		u := users[s.user]
		if u == nil {
			u = &oldLogUser{User: s.user, Online: true, Rooms: []string{}, LastSeen: seen[s.user]}
			users[s.user] = u
		}
		if s.room != "" {
			u.Rooms = append(u.Rooms, s.room)
			members[s.room] = append(members[s.room], oldLogWant(s.user, s.state, seen[s.user+"/"+s.room]))
		}
		u.Sessions = append(u.Sessions, oldLogWant(s.room, s.state, seen[s.user+"/"+s.room]))
	}
	for _, gone := range []string{"eve", "judy"} {
		users[gone] = &oldLogUser{User: gone, Rooms: []string{}, LastSeen: seen[gone]}
	}

	for name, want := range users {
		var got struct {
			User     string   `json:"user"`
			Online   bool     `json:"online"`
			Rooms    []string `json:"rooms"`
			Sessions []struct {
				Room     string          `json:"room"`
				State    json.RawMessage `json:"state"`
				LastSeen string          `json:"last_seen"`
				Conns    []oldLogConn    `json:"connections"`
			} `json:"sessions"`
			LastSeen string `json:"last_seen"`
		}
		if code := n.Do("GET", "/v1/users/"+url.PathEscape(name), "", &got); code != 200 {
			t.Fatalf("start %d: GET /v1/users/%s: %d", start, name, code)
		}
		u := oldLogUser{User: got.User, Online: got.Online, Rooms: got.Rooms, LastSeen: got.LastSeen}
		for _, s := range got.Sessions {
			u.Sessions = append(u.Sessions, oldLogSession{Room: s.Room, State: string(s.State), LastSeen: s.LastSeen, Conns: fmtConns(s.Conns)})
		}
		// The order of a user's rooms is not part of the answer.
		slices.Sort(u.Rooms)
		slices.SortFunc(u.Sessions, func(a, b oldLogSession) int { return strings.Compare(a.Room, b.Room) })
		if !reflect.DeepEqual(u, *want) {
			t.Errorf("start %d: user %s:\n got %s\nwant %s", start, name, fmtOldLogUser(u), fmtOldLogUser(*want))
		}
	}

	for room, want := range members {
		var got struct {
			Members []struct {
				User     string          `json:"user"`
				LastSeen string          `json:"last_seen"`
				State    json.RawMessage `json:"state"`
				Conns    []oldLogConn    `json:"connections"`
			} `json:"members"`
			NextCursor *string `json:"next_cursor"`
		}
		if code := n.Do("GET", "/v1/rooms/"+url.PathEscape(room)+"/members?limit=100", "", &got); code != 200 {
			t.Fatalf("start %d: GET members of %q: %d", start, room, code)
		}
		var ms []oldLogSession
		for _, m := range got.Members {
			ms = append(ms, oldLogSession{Room: m.User, State: string(m.State), LastSeen: m.LastSeen, Conns: fmtConns(m.Conns)})
		}
		// Members come in the room's slot order, which a replay fills in
		// key order (user length first), not in the order of the joins.
		slices.SortFunc(ms, func(a, b oldLogSession) int { return strings.Compare(a.Room, b.Room) })
		if !reflect.DeepEqual(ms, want) || got.NextCursor != nil {
			t.Errorf("start %d: members of %q (next_cursor %v):\n got %v\nwant %v", start, room, got.NextCursor, ms, want)
		}
		if online, _ := n.RoomOnline(room); online != len(want) {
			t.Errorf("start %d: room %q online %d, want %d", start, room, online, len(want))
		}
	}

	// 9 users online, 12 sessions (alice 3, ivy 2 with the room-less one),
	// 5 rooms (the room-less sessions are in none), as the old release
	// said; one connection per session.
	type stats struct {
		OnlineUsers int  `json:"online_users"`
		Sessions    int  `json:"sessions"`
		Rooms       int  `json:"rooms"`
		Connections int  `json:"connections"`
		Partial     bool `json:"partial"`
	}
	var got stats
	if code := n.Do("GET", "/v1/stats", "", &got); code != 200 {
		t.Fatalf("start %d: GET /v1/stats: %d", start, code)
	}
	if want := (stats{OnlineUsers: 9, Sessions: 12, Rooms: 5, Connections: 12}); got != want {
		t.Errorf("start %d: /v1/stats %+v, want %+v", start, got, want)
	}
}

func fmtOldLogUser(u oldLogUser) string {
	var b strings.Builder
	fmt.Fprintf(&b, "online=%v rooms=%q last_seen=%s sessions:", u.Online, u.Rooms, u.LastSeen)
	for _, s := range u.Sessions {
		fmt.Fprintf(&b, " {%q %s %s conns %s}", s.Room, s.State, s.LastSeen, s.Conns)
	}
	return b.String()
}

// untarGz unpacks the flat tarball path (a data dir) into dir.
func untarGz(t *testing.T, path, dir string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("cannot read %s: %v", path, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("cannot read %s: %v", path, err)
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		name := filepath.Clean(h.Name)
		if h.Typeflag != tar.TypeReg || name != filepath.Base(name) {
			t.Fatalf("%s: unexpected entry %q", path, h.Name)
		}
		out, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, tr); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
