package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log sink safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A long replay of the write-ahead log says what it does: it logs the
// sessions replayed so far, and /readyz, asked while it runs, answers 503
// with {"status":"starting","replayed":N}.
func TestReplayReportsProgress(t *testing.T) {
	const sessions = 5000
	cfg := DefaultConfig()
	cfg.HTTPAddr, cfg.UDPAddr, cfg.DataDir = "127.0.0.1:0", "", t.TempDir()
	cfg.HeartbeatMinGap = 0
	cfg.TTL = time.Hour
	start := func(log io.Writer, progress func(*Server, int64)) *Server {
		t.Helper()
		s, err := New(cfg, NewLogger(log, cfg, nil))
		if err != nil {
			t.Fatal(err)
		}
		s.replayLogEvery = 0 // every 1024 sessions
		if progress != nil {
			s.replayProgress = func(n int64) { progress(s, n) }
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	stop := func(s *Server) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s := start(io.Discard, nil)
	now := time.Now().UnixMilli()
	for i := range sessions {
		if o := s.heartbeat(trHTTP, fmt.Appendf(nil, "user-%d", i), []byte("room"), nil, nil, now); o != outOK {
			t.Fatalf("heartbeat %d: %v", i, o)
		}
	}
	stop(s)

	type seen struct {
		n      int64
		status int
		body   string
	}
	var during []seen
	log := &lockedBuffer{}
	s = start(log, func(s *Server, n int64) {
		resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz")
		if err != nil {
			t.Errorf("GET /readyz during replay: %v", err)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		during = append(during, seen{n, resp.StatusCode, string(b)})
	})
	defer stop(s)
	if len(during) < sessions/1024 {
		t.Fatalf("%d progress reports while replaying %d sessions, want one per 1024", len(during), sessions)
	}
	for _, d := range during {
		want := fmt.Sprintf(`"status":"starting","error":"starting: replaying the write-ahead log","replayed":%d}`, d.n)
		if d.status != http.StatusServiceUnavailable || !strings.Contains(d.body, want) {
			t.Fatalf("/readyz during replay at %d sessions: %d %s, want 503 with %s", d.n, d.status, d.body, want)
		}
	}
	for _, n := range []int{1024, 4096} {
		if want := fmt.Sprintf(`msg="replaying the write-ahead log" replayed=%d `, n); !strings.Contains(log.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, log.String())
		}
	}
	if got := s.m.Stats().Sessions; got != sessions {
		t.Fatalf("%d sessions after replay, want %d", got, sessions)
	}
}
