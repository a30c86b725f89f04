package server_test

import (
	"testing"
	"time"

	"github.com/presenced/presenced/server"
)

// noEventWithin fails the test when w receives an event within d.
func (w *wsClient) noEventWithin(d time.Duration) {
	w.t.Helper()
	select {
	case m := <-w.in:
		w.t.Fatalf("got %v, want nothing", m)
	case <-time.After(d):
	}
}

// wantUnsubscribed checks that m is the notice ending the subscription to
// room because the socket's membership in it ended.
func wantUnsubscribed(t *testing.T, m map[string]any, room string) {
	t.Helper()
	if m["op"] != "unsubscribed" || m["room"] != room || m["reason"] != "membership_ended" {
		t.Fatalf("got %v, want the unsubscribed notice for %q", m, room)
	}
}

// A subscription granted by a session (no API token) ends when the session
// does: at the socket's own leave, and when the session times out. The
// socket is told, and gets no event of the room afterwards.
func TestWSMembershipSubscriptionEnds(t *testing.T) {
	const tok = "api-token-0123456789abcdef"
	n := startNode(t, func(c *server.Config) {
		writeAPIToken(t, tok)(c)
		c.TTL, c.Interval = 1500*time.Millisecond, 500*time.Millisecond
	})
	obs := dialWS(t, n, "?access_token="+tok, nil)
	obs.mustOK(map[string]any{"op": "subscribe", "ref": 0, "room": "board"})

	// Leave: the notice comes with the leave's answer.
	eve := dialWS(t, n, "", nil)
	eve.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "eve", "room": "board"})
	wantEvent(t, obs.next(5*time.Second), "join eve board")
	eve.mustOK(map[string]any{"op": "subscribe", "ref": 2, "room": "board"})
	eve.send(map[string]any{"op": "leave", "ref": 3, "user": "eve", "room": "board"})
	for answered, notified := false, false; !answered || !notified; {
		switch m := eve.next(5 * time.Second); {
		case m["op"] == "leave" && m["ok"] == true:
			answered = true
		case m["op"] == "unsubscribed":
			wantUnsubscribed(t, m, "board")
			notified = true
		case m["type"] == "leave" && m["user"] == "eve" && !notified:
			// her own leave may reach the subscription first
		default:
			t.Fatalf("after the leave: %v", m)
		}
	}
	n.Heartbeat("bob", "board")
	wantEvent(t, obs.next(5*time.Second), "leave eve board left")
	wantEvent(t, obs.next(5*time.Second), "join bob board")
	eve.noEventWithin(300 * time.Millisecond)
	eve.mustErr(map[string]any{"op": "unsubscribe", "ref": 4, "room": "board"}, "not subscribed")

	// Timeout: the session expires without a leave.
	eve.mustOK(map[string]any{"op": "heartbeat", "ref": 5, "user": "eve", "room": "board"})
	eve.mustOK(map[string]any{"op": "subscribe", "ref": 6, "room": "board"})
	wantEvent(t, obs.next(5*time.Second), "join eve board")
	for { // bob stays, eve's session times out
		m := obs.next(5 * time.Second)
		if m["type"] == "leave" && m["user"] == "eve" {
			break
		}
		n.Heartbeat("bob", "board")
	}
	n.Heartbeat("carol", "board")
	for {
		m := eve.next(5 * time.Second)
		if m["op"] == "unsubscribed" {
			wantUnsubscribed(t, m, "board")
			break
		}
		if m["user"] == "carol" {
			t.Fatalf("carol's join reached eve after her session timed out: %v", m)
		}
	}
	wantEvent(t, obs.next(5*time.Second), "join carol board")
	eve.noEventWithin(300 * time.Millisecond)
	// A new session grants a new subscription.
	eve.mustOK(map[string]any{"op": "heartbeat", "ref": 7, "user": "eve", "room": "board"})
	eve.mustOK(map[string]any{"op": "subscribe", "ref": 8, "room": "board"})
}

// The room-less session grants no subscription: room "" would carry every
// user's room-less sessions.
func TestWSRoomlessSessionGrantsNoSubscription(t *testing.T) {
	const tok = "api-token-0123456789abcdef"
	n := startNode(t, writeAPIToken(t, tok))
	eve := dialWS(t, n, "", nil)
	eve.mustOK(map[string]any{"op": "heartbeat", "ref": 1, "user": "eve"})
	eve.mustErr(map[string]any{"op": "subscribe", "ref": 2, "room": ""}, "needs an API token")
	n.Heartbeat("carol", "")
	eve.noEventWithin(300 * time.Millisecond)
}
