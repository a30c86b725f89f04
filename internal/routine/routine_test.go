package routine

import (
	"context"
	"errors"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitWaitsForEveryGoroutine(t *testing.T) {
	var g Group
	var n atomic.Int32
	release := make(chan struct{})
	for range 5 {
		g.Go("worker", func() { <-release; n.Add(1) })
	}
	if got := g.Running(); !slices.Equal(got, []string{"worker", "worker", "worker", "worker", "worker"}) {
		t.Fatalf("Running() = %v, want five workers", got)
	}
	close(release)
	g.Wait()
	if n.Load() != 5 {
		t.Fatalf("Wait returned after %d of 5 goroutines", n.Load())
	}
	if got := g.Running(); len(got) != 0 {
		t.Fatalf("Running() after Wait = %v, want none", got)
	}
}

func TestWaitContextNamesWhatStillRuns(t *testing.T) {
	var g Group
	release := make(chan struct{})
	g.Go("fast", func() {})
	g.Go("stuck", func() { <-release })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := g.WaitContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "[stuck]") {
		t.Fatalf("WaitContext = %v, want a deadline error naming only [stuck]", err)
	}
	close(release)
	if err := g.WaitContext(context.Background()); err != nil {
		t.Fatalf("WaitContext after release = %v", err)
	}
}

func TestGoroutineCarriesItsName(t *testing.T) {
	var g Group
	got := make(chan string, 1)
	g.Go("sweeper", func() {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		got <- b.String()
	})
	g.Wait()
	if dump := <-got; !strings.Contains(dump, `"routine":"sweeper"`) {
		t.Fatalf("the goroutine profile shows no label routine=sweeper:\n%s", dump)
	}
}

func TestGoFromInsideTheGroup(t *testing.T) {
	var g Group
	var n atomic.Int32
	g.Go("parent", func() {
		g.Go("child", func() { n.Add(1) })
		n.Add(1)
	})
	g.Wait()
	if n.Load() != 2 {
		t.Fatalf("Wait returned with %d of 2 goroutines done", n.Load())
	}
}
