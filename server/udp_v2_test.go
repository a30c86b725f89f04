package server_test

import (
	"testing"
	"time"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/wire"
)

// v2 datagrams are signed: a flipped op, a replay, a stale timestamp or a
// datagram built from a captured token without its client key are dropped;
// under --require-v2, so is v1.
func TestUDPProtocolV2(t *testing.T) {
	secret := withSecret(t)
	n := startNode(t, func(c *server.Config) { secret(c); c.RequireV2 = true })
	uc := n.UDPClient()
	tok, _ := n.Keys.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	key, err := n.Keys.ClientKey([]byte(tok))
	if err != nil {
		t.Fatal(err)
	}
	ts := uint64(time.Now().UnixMilli())
	v2 := func(seq uint32, tsMs uint64, k []byte, items ...wire.Item) []byte {
		b, err := wire.AppendRequestV2(nil, seq, true, tsMs, []byte(tok), k, items)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// ack waits a second for a reply; an expected drop is also counted
	// (checked at the end), so for those a short wait will do.
	const ok, drop = time.Second, 150 * time.Millisecond
	ack := func(b []byte, wait time.Duration) []wire.Status {
		var r wire.Reply
		if err := r.Decode(uc.Send(b, wait)); err != nil {
			return nil
		}
		return r.Statuses()
	}
	dropped := func(reason string) float64 {
		return n.Metric(`presenced_udp_dropped_datagrams_total{reason="` + reason + `"}`)
	}
	// A signed heartbeat is applied and acked.
	first := v2(1, ts, key[:], hb("alice", "lobby", ""))
	if st := ack(first, ok); len(st) != 1 || st[0] != wire.StatusOK || !n.User("alice").Online {
		t.Fatalf("signed heartbeat: %v", st)
	}
	// The same datagram again (a replay), from the same or another socket.
	if st := ack(first, drop); st != nil {
		t.Fatalf("replayed datagram answered %v", st)
	}
	if st := n.UDPClient().Send(first, drop); st != nil {
		t.Fatalf("replay from another address answered %x", st)
	}
	// Flipped to a leave: the MAC no longer matches.
	flipped := v2(2, ts+1, key[:], hb("alice", "lobby", ""))
	flipped[wire.HeaderLenV2+1+len(tok)] = byte(wire.OpLeave)
	if st := ack(flipped, drop); st != nil || !n.User("alice").Online {
		t.Fatalf("flipped op: reply %v, alice online %v", st, n.User("alice").Online)
	}
	// A captured token without its client key cannot sign.
	if st := ack(v2(3, ts+2, []byte(tok), hb("alice", "r2", "")), drop); st != nil {
		t.Fatalf("signed with the token instead of its key: %v", st)
	}
	// Too old or too far ahead.
	if st := ack(v2(4, ts-60_000, key[:], hb("alice", "r3", "")), drop); st != nil {
		t.Fatalf("stale timestamp answered %v", st)
	}
	// v1 is refused under --require-v2.
	if st := ack(uc.Request(5, true, hb("alice", "lobby", tok)), drop); st != nil {
		t.Fatalf("v1 under --require-v2 answered %v", st)
	}
	// A signed leave with a later timestamp works.
	leave := wire.Item{Op: wire.OpLeave, User: []byte("alice")}
	if st := ack(v2(6, ts+3, key[:], leave), ok); len(st) != 1 || st[0] != wire.StatusOK || n.User("alice").Online {
		t.Fatalf("signed leave: %v", st)
	}
	// Signed with alice's key, for bob: every v2 check passes, the token
	// is not bob's: no genuine token, counted bad_token.
	if st := ack(v2(7, ts+4, key[:], hb("bob", "lobby", "")), drop); st != nil || n.User("bob").Online {
		t.Fatalf("alice's token for bob: reply %v", st)
	}
	for reason, want := range map[string]float64{"replayed": 2, "bad_mac": 2, "stale": 1, "v1_refused": 1, "bad_token": 1, "unauthenticated": 0} {
		if got := dropped(reason); got != want {
			t.Errorf("drops %s = %v, want %v", reason, got, want)
		}
	}
}

// Without --require-v2 both versions are accepted.
func TestUDPV1StillAccepted(t *testing.T) {
	n := startNode(t, withSecret(t))
	uc := n.UDPClient()
	tok, _ := n.Keys.Mint("", "bob", "", false, time.Now().Add(time.Hour))
	key, _ := n.Keys.ClientKey([]byte(tok))
	var r wire.Reply
	if err := r.Decode(uc.Send(uc.Request(1, true, hb("bob", "r", tok)), time.Second)); err != nil || r.Statuses()[0] != wire.StatusOK {
		t.Fatalf("v1: %v %v", err, r.Statuses())
	}
	b, _ := wire.AppendRequestV2(nil, 2, true, uint64(time.Now().UnixMilli()), []byte(tok), key[:], []wire.Item{hb("bob", "r2", "")})
	if err := r.Decode(uc.Send(b, time.Second)); err != nil || r.Statuses()[0] != wire.StatusOK {
		t.Fatalf("v2: %v %v", err, r.Statuses())
	}
}
