package client_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/internal/testkit"
)

// An overloaded node answers with interval_ms and ttl_ms raised
// (--overload-backoff) and lowers them again when it recovers: the client
// takes the timing of every answer, so it heartbeats slower, then faster.
func TestFollowsTimingChangesMidFlight(t *testing.T) {
	var shedding atomic.Bool
	var beats atomic.Int64
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		beats.Add(1)
		if shedding.Load() {
			w.Write([]byte(`{"interval_ms":400,"ttl_ms":6000}`))
			return
		}
		w.Write([]byte(`{"interval_ms":200,"ttl_ms":3000}`))
	}))
	t.Cleanup(fake.Close)
	h := start(t, client.Config{BaseURL: fake.URL, User: "alice", Room: "lobby"})
	want := func(iv, ttl time.Duration) {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, "the client to take "+iv.String()+"/"+ttl.String(), func() bool {
			st := h.Status()
			return st.Interval == iv && st.TTL == ttl
		})
	}
	want(200*time.Millisecond, 3*time.Second)
	shedding.Store(true)
	want(400*time.Millisecond, 6*time.Second)
	shedding.Store(false)
	want(200*time.Millisecond, 3*time.Second)
	if beats.Load() < 3 {
		t.Fatalf("%d heartbeats", beats.Load())
	}
}
