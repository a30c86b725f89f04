package routine

import (
	"context"
	"fmt"
	"runtime/pprof"
	"slices"
	"sync"
)

// Group tracks the goroutines started through it. The zero Group is ready
// to use.
type Group struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	running map[string]int // name -> goroutines of that name still running
}

// Go runs fn on a new goroutine named name, tracked until fn returns.
func (g *Group) Go(name string, fn func()) {
	g.mu.Lock()
	if g.running == nil {
		g.running = make(map[string]int)
	}
	g.running[name]++
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.done(name)
		pprof.Do(context.Background(), pprof.Labels("routine", name), func(context.Context) { fn() })
	}()
}

func (g *Group) done(name string) {
	g.mu.Lock()
	if g.running[name]--; g.running[name] == 0 {
		delete(g.running, name)
	}
	g.mu.Unlock()
}

// Wait returns once every goroutine started through g has returned.
func (g *Group) Wait() { g.wg.Wait() }

// WaitContext is Wait bounded by ctx: it returns nil once every goroutine
// has returned, or an error wrapping ctx.Err() that names the goroutines
// still running. Those keep running; a later Wait still waits for them.
func (g *Group) WaitContext(ctx context.Context) error {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cannot wait for goroutines %v: %w", g.Running(), ctx.Err())
	}
}

// Running returns the names of the goroutines still running, sorted, one
// entry per goroutine.
func (g *Group) Running() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var names []string
	for name, n := range g.running {
		for range n {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}
