package server

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// Every session times out exactly once across a shutdown and a restart,
// also when the shutdown comes in the middle of a sweep that expires them.
// The sweeper stops before the log takes its final drain: an expiry after
// the drain would be counted before the shutdown and again, found expired
// in the log, at the next start.
func TestExpiryAcrossShutdownCountedOnce(t *testing.T) {
	const n = 100_000
	dir := t.TempDir()
	start := func() *Server {
		cfg := DefaultConfig()
		cfg.HTTPAddr, cfg.UDPAddr = "127.0.0.1:0", ""
		cfg.DataDir, cfg.Persist.Dir = dir, dir
		cfg.SweepInterval = 50 * time.Millisecond
		s, err := New(cfg, NewLogger(io.Discard, cfg, nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	shutdown := func(s *Server) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s := start()
	// n sessions with one expiry, so one sweep pass ends them all.
	now := time.Now().UnixMilli()
	for i := range n {
		if _, err := s.m.Touch(fmt.Appendf(nil, "u%d", i), []byte("r"), now, 2000); err != nil {
			t.Fatal(err)
		}
	}
	// Setup, not a measure: committing 100,000 sessions under -race has
	// taken more than 10 s on a loaded 2-core machine.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.store.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	// Shut down as soon as the pass that expires them has begun.
	for deadline := time.Now().Add(20 * time.Second); s.m.Stats().Sessions == n; {
		if time.Now().After(deadline) {
			t.Fatal("sessions never expired")
		}
	}
	shutdown(s)
	first := s.met.leavesTimeout.Load()
	s2 := start()
	second := s2.met.leavesTimeout.Load()
	shutdown(s2)
	if first+second != n {
		t.Fatalf("%d sessions timed out %d times in all (%d before the shutdown, %d found expired at restart), want once each",
			n, first+second, first, second)
	}
}
