package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/internal/testkit"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/internal/redistest"
	"github.com/presenced/presenced/server/internal/webhook"
)

const hookSecret = "0123456789abcdef0123456789abcdef-hooks"

// hookReceiver is a webhook receiver on loopback that answers status and
// records the events of the batches it accepted (signature checked).
type hookReceiver struct {
	srv    *httptest.Server
	status atomic.Int32
	delay  atomic.Int64 // ns each answer waits
	reqs   atomic.Int64
	mu     sync.Mutex
	evs    []servertest.Event
}

func newHookReceiver(t testing.TB, status int) *hookReceiver {
	h := &hookReceiver{}
	h.status.Store(int32(status))
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.reqs.Add(1)
		time.Sleep(time.Duration(h.delay.Load())) // a slow receiver, by design
		code := int(h.status.Load())
		if webhook.Verify([]byte(hookSecret), r.Header.Get(webhook.SignatureHeader), body, time.Now().Unix(), 300) != nil {
			code = 401
		}
		if code/100 == 2 {
			var b struct{ Events []servertest.Event }
			_ = json.Unmarshal(body, &b)
			h.mu.Lock()
			h.evs = append(h.evs, b.Events...)
			h.mu.Unlock()
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) count(typ, user string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.evs {
		if e.Type == typ && e.User == user {
			n++
		}
	}
	return n
}

func hookConfig(t testing.TB, cfg *server.Config, url string) {
	f := filepath.Join(t.TempDir(), "hook.keys")
	if err := os.WriteFile(f, []byte("k1 "+hookSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Webhook.URL = url
	cfg.Webhook.SecretFile = f
	cfg.Webhook.ClaimAfter = time.Second
	cfg.Webhook.MaxBackoff = 200 * time.Millisecond
	cfg.Webhook.Linger = 20 * time.Millisecond
}

// Two nodes and Redis: the node that decided an event reads it from the
// consumer group, fails to deliver it and dies; the other node takes over
// the lease, claims the event after --webhook-claim-after and delivers it.
func TestWebhookClusterNodeDiesBeforeDelivery(t *testing.T) {
	r := redistest.Start(t)
	rec := newHookReceiver(t, 503)
	cfg := clusterTestConfig(r.Addr())
	hookConfig(t, &cfg, rec.srv.URL)
	a := startCluster(t, cfg)
	testkit.Eventually(t, 5*time.Second, "A holds the delivery lease", func() bool { return a.Srv.HooksForTest().IsLeader() })
	b := startCluster(t, cfg)

	a.Heartbeat("decided-by-a", "room")
	testkit.Eventually(t, 5*time.Second, "A tried to deliver", func() bool { return rec.reqs.Load() > 0 })
	a.kill()
	rec.status.Store(200)
	testkit.Eventually(t, 15*time.Second, "B delivered A's event", func() bool { return rec.count("join", "decided-by-a") > 0 })
	hb := b.Srv.HooksForTest()
	if !hb.IsLeader() || hb.Stats().Delivered == 0 {
		t.Fatalf("B leader %v, stats %+v", hb.IsLeader(), hb.Stats())
	}
	// B delivers what comes next too, and nothing is dead-lettered.
	b.Heartbeat("after", "room")
	testkit.Eventually(t, 5*time.Second, "B delivered a new event", func() bool { return rec.count("join", "after") == 1 })
	if st := hb.Stats(); st.DeadLettered != 0 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// singleTestConfig is a single node whose sessions do not time out during
// a test (no timeout leaves among the events).
func singleTestConfig() server.Config {
	cfg := clusterTestConfig("")
	cfg.TTL, cfg.Interval = time.Minute, 20*time.Second
	return cfg
}

func startSingle(t *testing.T, cfg server.Config) *cnode {
	t.Helper()
	return &cnode{Node: servertest.StartConfig(t, cfg)}
}

// A single node with --data-dir restarted while its receiver fails
// delivers what it had queued once it runs again.
func TestWebhookSingleNodeRestartMidQueue(t *testing.T) {
	rec := newHookReceiver(t, 500)
	cfg := singleTestConfig()
	cfg.DataDir = t.TempDir()
	hookConfig(t, &cfg, rec.srv.URL)
	a := startSingle(t, cfg)
	for _, u := range []string{"u1", "u2", "u3"} {
		a.Heartbeat(u, "room")
	}
	// 3 joins (and the room's occupied event).
	testkit.Eventually(t, 5*time.Second, "3 events queued", func() bool { return a.Srv.HooksForTest().Stats().Depth >= 3 })
	testkit.Eventually(t, 5*time.Second, "a failed attempt", func() bool { return rec.reqs.Load() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rec.status.Store(200)
	b := startSingle(t, cfg)
	testkit.Eventually(t, 10*time.Second, "queued events delivered after the restart", func() bool {
		return rec.count("join", "u1") > 0 && rec.count("join", "u2") > 0 && rec.count("join", "u3") > 0
	})
	testkit.Eventually(t, 5*time.Second, "queue empty", func() bool { return b.Srv.HooksForTest().Stats().Depth == 0 })
}

// Trimming the event stream past events the webhook group had not read
// is counted and delivered as a reset, never dropped silently.
func TestWebhookClusterTrimmedGap(t *testing.T) {
	r := redistest.Start(t)
	rec := newHookReceiver(t, 503)
	cfg := clusterTestConfig(r.Addr())
	hookConfig(t, &cfg, rec.srv.URL)
	cfg.Webhook.Batch = 5
	cfg.Cluster.StreamMaxLen = 10                       // MAXLEN ~ trims whole nodes of 100 entries
	cfg.TTL, cfg.Interval = time.Minute, 20*time.Second // no timeout leaves during the test
	a := startCluster(t, cfg)
	testkit.Eventually(t, 5*time.Second, "A holds the delivery lease", func() bool { return a.Srv.HooksForTest().IsLeader() })
	a.Heartbeat("first", "room")
	testkit.Eventually(t, 5*time.Second, "a failed attempt", func() bool { return rec.reqs.Load() > 0 })
	for i := range 300 {
		a.Heartbeat("u"+strconv.Itoa(i), "room")
	}
	c := r.Client()
	defer c.Close()
	testkit.Eventually(t, 10*time.Second, "the stream trimmed", func() bool {
		n, err := c.XLen(context.Background(), a.Srv.ClusterForTest().StreamKey()).Result()
		return err == nil && n < 300
	})
	rec.status.Store(200)
	hk := a.Srv.HooksForTest()
	testkit.Eventually(t, 10*time.Second, "a reset delivered", func() bool { return rec.count("reset", "") > 0 })
	a.Heartbeat("after-gap", "room")
	testkit.Eventually(t, 10*time.Second, "an event after the gap delivered", func() bool { return rec.count("join", "after-gap") > 0 })
	// Every event (302 joins, and the room's occupied event) is delivered
	// or counted lost; one reset stands for the lost. Waited for: the
	// after-gap join is not the last to come (the table's change log is
	// drained shard by shard, not in the order of the heartbeats).
	delivered := func() int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		ids := map[string]bool{}
		for _, e := range rec.evs {
			if e.Type != "reset" {
				ids[e.ID] = true
			}
		}
		return len(ids)
	}
	testkit.EventuallyErr(t, 10*time.Second, "every event delivered or counted lost", func() error {
		if st := hk.Stats(); delivered()+int(st.Lost) < 302 {
			return fmt.Errorf("%d delivered and %d lost of 302-303: %+v", delivered(), st.Lost, st)
		}
		return nil
	})
	if st := hk.Stats(); st.Lost == 0 || delivered()+int(st.Lost) > 303 {
		t.Fatalf("gap not counted: %d delivered, %+v", delivered(), st)
	}
}

// heartbeatLatencies sends n HTTP heartbeats of new users (each a join
// event) and returns their latencies, sorted.
func heartbeatLatencies(t testing.TB, base string, prefix string, n int) []time.Duration {
	c := &http.Client{Timeout: 2 * time.Second}
	out := make([]time.Duration, 0, n)
	for i := range n {
		body := `{"user":"` + prefix + strconv.Itoa(i) + `","room":"r` + strconv.Itoa(i%10) + `"}`
		t0 := time.Now()
		resp, err := c.Post(base+"/v1/heartbeat", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("heartbeat %d: status %d", i, resp.StatusCode)
		}
		out = append(out, time.Since(t0))
	}
	slices.Sort(out)
	c.CloseIdleConnections()
	return out
}

// A receiver that takes seconds to answer never holds heartbeats up: they
// are answered while a batch hangs in flight and the queue grows. (The
// bound is generous; BenchmarkHeartbeatSlowWebhook compares latencies.)
func TestWebhookSlowReceiverDoesNotSlowHeartbeats(t *testing.T) {
	rec := newHookReceiver(t, 200)
	rec.delay.Store(int64(3 * time.Second))
	cfg := singleTestConfig()
	cfg.DataDir = t.TempDir()
	hookConfig(t, &cfg, rec.srv.URL)
	a := startSingle(t, cfg)
	a.Heartbeat("first", "room")
	testkit.Eventually(t, 5*time.Second, "a batch in flight", func() bool { return rec.reqs.Load() > 0 })
	lat := heartbeatLatencies(t, a.Base, "u", 200)
	if p := lat[len(lat)*99/100]; p > time.Second {
		t.Fatalf("heartbeat p99 %v with a slow webhook receiver", p)
	}
	if d := a.Srv.HooksForTest().Stats().Depth; d < 100 {
		t.Fatalf("queue depth %d: the joins were not queued behind the slow batch", d)
	}
}

// BenchmarkHeartbeatSlowWebhook reports heartbeat latency (p50, p99) on a
// single node with --data-dir: without webhooks, and with a receiver that
// answers after 1 s.
func BenchmarkHeartbeatSlowWebhook(b *testing.B) {
	for _, slow := range []bool{false, true} {
		name := "no-webhook"
		if slow {
			name = "slow-receiver"
		}
		b.Run(name, func(b *testing.B) {
			cfg := singleTestConfig()
			cfg.DataDir = b.TempDir()
			if slow {
				rec := newHookReceiver(b, 200)
				rec.delay.Store(int64(time.Second))
				hookConfig(b, &cfg, rec.srv.URL)
			}
			s := servertest.StartConfig(b, cfg).Srv
			b.ResetTimer()
			lat := heartbeatLatencies(b, "http://"+s.HTTPAddr(), "u", b.N)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
	}
}

// --leave-delay applies to webhooks as to streams: a leave and a rejoin
// within it send nothing; a leave with no rejoin is sent, the delay late.
func TestWebhookLeaveDebounce(t *testing.T) {
	rec := newHookReceiver(t, 200)
	cfg := singleTestConfig()
	cfg.LeaveDelay = 500 * time.Millisecond
	hookConfig(t, &cfg, rec.srv.URL)
	a := startSingle(t, cfg)
	a.Heartbeat("reload", "room")
	a.Heartbeat("gone", "room")
	a.Do("POST", "/v1/leave", `{"user":"reload","room":"room"}`, nil)
	a.Heartbeat("reload", "room")
	a.Do("POST", "/v1/leave", `{"user":"gone","room":"room"}`, nil)
	testkit.Eventually(t, 5*time.Second, "the leave of gone", func() bool { return rec.count("leave", "gone") == 1 })
	if j, l := rec.count("join", "reload"), rec.count("leave", "reload"); j != 1 || l != 0 {
		t.Fatalf("reload: %d joins, %d leaves; want the first join only", j, l)
	}
}

// A clean shutdown while leaves are held by --leave-delay delivers them:
// they are queued before the node stops and reach the receiver after the
// restart, which then does not say "join" last about users who are gone.
func TestWebhookHeldLeavesSurviveShutdown(t *testing.T) {
	rec := newHookReceiver(t, 200)
	cfg := singleTestConfig()
	cfg.DataDir = t.TempDir()
	cfg.LeaveDelay = time.Minute
	hookConfig(t, &cfg, rec.srv.URL)
	a := startSingle(t, cfg)
	users := []string{"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9"}
	for _, u := range users {
		a.Heartbeat(u, "room")
	}
	testkit.Eventually(t, 5*time.Second, "10 joins delivered", func() bool {
		for _, u := range users {
			if rec.count("join", u) != 1 {
				return false
			}
		}
		return true
	})
	for _, u := range users {
		a.Do("POST", "/v1/leave", `{"user":"`+u+`","room":"room"}`, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	startSingle(t, cfg)
	testkit.Eventually(t, 10*time.Second, "10 leaves delivered", func() bool {
		for _, u := range users {
			if rec.count("leave", u) != 1 {
				return false
			}
		}
		return true
	})
}

// A reload (SIGHUP) reads --webhook-secret-file again: a rotated secret
// signs the next batch, which a receiver that moved to it accepts.
func TestWebhookSecretReload(t *testing.T) {
	rec := newHookReceiver(t, 200)
	cfg := singleTestConfig()
	hookConfig(t, &cfg, rec.srv.URL)
	n := startSingle(t, cfg)
	n.Heartbeat("before", "room")
	testkit.Eventually(t, 10*time.Second, "the first join delivered", func() bool { return rec.count("join", "before") == 1 })

	// The receiver rejects everything but the new secret from now on.
	const rotated = "fedcba9876543210fedcba9876543210-rotated"
	var newSigned atomic.Int64
	rec.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if webhook.Verify([]byte(rotated), r.Header.Get(webhook.SignatureHeader), body, time.Now().Unix(), 300) != nil {
			w.WriteHeader(401)
			return
		}
		newSigned.Add(1)
		w.WriteHeader(200)
	})
	if err := os.WriteFile(cfg.Webhook.SecretFile, []byte("k2 "+rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	changes, err := n.Srv.Reload(cfg)
	if err != nil || !slices.Contains(changes, "webhook secret reloaded") {
		t.Fatalf("reload: %v %v", changes, err)
	}
	n.Heartbeat("after", "room")
	testkit.Eventually(t, 10*time.Second, "a batch signed with the rotated secret", func() bool { return newSigned.Load() > 0 })
	if st := n.Srv.HooksForTest().Stats(); st.DeadLettered != 0 {
		t.Fatalf("stats %+v: a batch was refused after the reload", st)
	}
}
