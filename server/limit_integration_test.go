package server_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

func TestPerSessionFloodDoesNotExtend(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.HeartbeatMinGap = 2 * time.Second })
	if code := n.heartbeat("flood", "r", ""); code != 200 {
		t.Fatalf("first heartbeat: %d", code)
	}
	first := *n.user("flood").LastSeen
	for i := range 20 {
		if code := n.heartbeat("flood", "r", ""); code != 429 {
			t.Fatalf("flood heartbeat %d: %d, want 429", i, code)
		}
	}
	uc := n.udpClient()
	got := uc.send(uc.request(1, true, hb("flood", "r", "")), time.Second)
	var r wire.Reply
	if err := r.Decode(got); err != nil || r.Statuses()[0] != wire.StatusRateLimited {
		t.Fatalf("udp flood reply %x: %v", got, err)
	}
	if last := *n.user("flood").LastSeen; last != first {
		t.Fatalf("flood moved last_seen from %s to %s", first, last)
	}
	if v := n.metric(`presenced_heartbeats_total{outcome="rate_limited",transport="http"}`); v != 20 {
		t.Fatalf("rate_limited metric = %v, want 20", v)
	}
}

func TestPerSourceLimit(t *testing.T) {
	n := startNode(t, func(c *server.Config) { c.SourceRate = 5; c.SourceBurst = 10 })
	ok, limited := 0, 0
	for i := range 30 {
		switch code := n.heartbeat(fmt.Sprintf("u%d", i), "r", ""); code {
		case 200:
			ok++
		case 429:
			limited++
		default:
			t.Fatalf("heartbeat: %d", code)
		}
	}
	// 10 of burst plus at most a few refilled at 5/s while the loop ran.
	if ok < 10 || ok > 15 || limited != 30-ok {
		t.Fatalf("%d accepted, %d limited; want the burst of 10 (+ refill) accepted", ok, limited)
	}
	if s := n.stats(); s.Sessions != ok {
		t.Fatalf("limited heartbeats changed state: %d sessions for %d accepted", s.Sessions, ok)
	}
	// UDP from the same address shares the bucket: dropped without a reply.
	uc := n.udpClient()
	if got := uc.send(uc.request(1, true, hb("udp-user", "r", "")), 200*time.Millisecond); got != nil {
		t.Fatalf("rate-limited datagram got a reply %x", got)
	}
	if v := n.metric(`presenced_udp_dropped_datagrams_total{reason="rate_limited"}`); v < 1 {
		t.Fatalf("udp rate_limited drops = %v", v)
	}
}

func TestAPITokenGuardsReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api")
	os.WriteFile(path, []byte("# readers\nreader-token-0123456789\n"), 0o600)
	n := startNode(t, func(c *server.Config) { c.APITokenFile = path; c.MaxEventStreams = 1 })
	if code := n.heartbeat("alice", "r", ""); code != 200 {
		t.Fatalf("heartbeats need no API token: %d", code)
	}
	get := func(path, tok string) int {
		req, _ := http.NewRequest("GET", n.base+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, p := range []string{"/v1/stats", "/v1/users/alice", "/v1/rooms/r", "/v1/rooms/r/members", "/v1/rooms?top=3", "/v1/events"} {
		if code := get(p, ""); code != 401 {
			t.Errorf("%s without token: %d, want 401", p, code)
		}
		if code := get(p, "reader-token-0123456789x"); code != 401 {
			t.Errorf("%s with a wrong token: %d, want 401", p, code)
		}
	}
	for _, p := range []string{"/v1/stats", "/v1/users/alice", "/v1/rooms/r", "/v1/rooms/r/members", "/v1/rooms?top=3"} {
		if code := get(p, "reader-token-0123456789"); code != 200 {
			t.Errorf("%s with the token: %d, want 200", p, code)
		}
	}
	if code := get("/livez", ""); code != 200 {
		t.Errorf("/livez needs no token: %d", code)
	}
	// --max-event-streams 1: the second concurrent stream is refused.
	req, _ := http.NewRequest("GET", n.base+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer reader-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first stream: %v %v", err, resp)
	}
	defer resp.Body.Close()
	if code := get("/v1/events", "reader-token-0123456789"); code != 429 {
		t.Fatalf("second stream: %d, want 429", code)
	}
}

func TestReloadKeysAndLimits(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	os.WriteFile(keys, []byte("old 0123456789abcdef0123456789abcdef-old-key\n"), 0o600)
	var cfg server.Config
	n := startNode(t, func(c *server.Config) { c.SecretFile = keys; c.MaxBatch = 2; cfg = *c })
	oldKeys, _ := token.LoadKeyring(keys)
	oldTok, _ := oldKeys.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	if code := n.heartbeat("alice", "r", oldTok); code != 200 {
		t.Fatalf("old key before reload: %d", code)
	}
	// Rotate: the new key signs, the old one is removed; raise max-batch.
	os.WriteFile(keys, []byte("new fedcba9876543210fedcba9876543210-new-key\n"), 0o600)
	cfg.MaxBatch = 3
	changes, err := n.srv.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(changes, "; ")
	if !strings.Contains(joined, "token keys: [old] -> [new]") || !strings.Contains(joined, "max-batch: 2 -> 3") {
		t.Fatalf("reload reported %q", joined)
	}
	newKeys, _ := token.LoadKeyring(keys)
	newTok, _ := newKeys.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	if code := n.heartbeat("alice", "r", oldTok); code != 401 {
		t.Fatalf("rotated-out key after reload: %d, want 401", code)
	}
	if code := n.heartbeat("alice", "r", newTok); code != 200 {
		t.Fatalf("new key after reload: %d", code)
	}
	if !n.user("alice").Online || n.stats().Sessions != 1 {
		t.Fatal("reload dropped sessions")
	}
	tb, _ := newKeys.Mint("", "b", "", false, time.Now().Add(time.Hour))
	tc, _ := newKeys.Mint("", "c", "", false, time.Now().Add(time.Hour))
	body := fmt.Sprintf(`{"heartbeats":[{"user":"alice","token":%q},{"user":"b","token":%q},{"user":"c","token":%q}]}`, newTok, tb, tc)
	if code := n.do("POST", "/v1/heartbeats", body, nil); code != 200 {
		t.Fatalf("batch of 3 after max-batch 3: %d", code)
	}
	// A bad reload changes nothing.
	cfg.SecretFile = filepath.Join(dir, "missing")
	if _, err := n.srv.Reload(cfg); err == nil {
		t.Fatal("reload with a missing secret file succeeded")
	}
	if code := n.heartbeat("b", "r", tb); code != 200 {
		t.Fatalf("failed reload disturbed the keys: %d", code)
	}
	// Settings that need a restart are named, not silently ignored.
	cfg.SecretFile = keys
	cfg.TTL = time.Hour
	changes, _ = n.srv.Reload(cfg)
	if !strings.Contains(strings.Join(changes, ";"), "TTL changed: needs a restart") {
		t.Fatalf("restart-only change not reported: %v", changes)
	}
}

func TestReloadRefusesKeyedToOpen(t *testing.T) {
	dir := t.TempDir()
	keys, api := filepath.Join(dir, "keys"), filepath.Join(dir, "api")
	os.WriteFile(keys, []byte(testSecret), 0o600)
	os.WriteFile(api, []byte("reader-token-0123456789\n"), 0o600)
	var cfg server.Config
	n := startNode(t, func(c *server.Config) { c.SecretFile, c.APITokenFile = keys, api; cfg = *c })
	unsigned := func() int { return n.heartbeat("mallory", "r", "") }
	if code := unsigned(); code != 401 {
		t.Fatalf("unsigned heartbeat on a keyed node: %d", code)
	}
	// The secret-file line is removed from the config: refused, still keyed.
	noSecret := cfg
	noSecret.SecretFile = ""
	if _, err := n.srv.Reload(noSecret); err == nil || !strings.Contains(err.Error(), "--allow-open-reload") {
		t.Fatalf("reload to open mode: err %v, want a refusal naming --allow-open-reload", err)
	}
	if code := unsigned(); code != 401 {
		t.Fatalf("unsigned heartbeat after a refused reload: %d, want 401", code)
	}
	// Same for the API tokens of the read endpoints.
	noAPI := cfg
	noAPI.APITokenFile = ""
	if _, err := n.srv.Reload(noAPI); err == nil {
		t.Fatal("reload dropping --api-token-file succeeded")
	}
	if code := n.do("GET", "/v1/stats", "", nil); code != 401 {
		t.Fatalf("read without bearer token after a refused reload: %d, want 401", code)
	}
	// Asked for explicitly, it goes open.
	noSecret.AllowOpenReload = true
	changes, err := n.srv.Reload(noSecret)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(changes, ";"), "open mode") {
		t.Fatalf("reload to open mode reported %q", changes)
	}
	if code := unsigned(); code != 200 {
		t.Fatalf("unsigned heartbeat after an allowed reload to open mode: %d", code)
	}
}
