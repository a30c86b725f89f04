package loadtest

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// job is one scheduled request of a pool generator.
type job struct {
	at int64 // intended time, ns after the epoch
	k  int64 // global job index: picks the user(s)
}

// jobWorker sends jobs and accounts for them in the step's stats. A worker
// is used by one goroutine only.
type jobWorker interface {
	do(st *stats, jobs []job)
	lose(st *stats, n int64) // count n jobs as lost, unsent
}

// poolGen is the open-loop generator for request/response transports
// (HTTP, Redis): one scheduler goroutine puts each job on a queue at its
// intended time and never waits for an answer; a fixed pool of workers
// takes jobs off the queue (up to take at once, for pipelining). A job that
// waits in the queue keeps its intended time, so queueing shows as latency.
type poolGen struct {
	rate    float64 // jobs/s
	n       int64   // jobs
	units   int64   // heartbeats per job
	jitter  float64
	take    int // jobs a worker takes at once
	kMul    int64
	kAdd    int64
	timeout time.Duration
	workers []jobWorker
	closeFn func()
}

func (g *poolGen) run(st *stats, stop *atomic.Bool) {
	queue := make(chan job, min(maxQueuedJobs, max(1024, int(math.Min(g.rate, 1e7)))))
	var skipAfter atomic.Int64 // ns after epoch; jobs taken later are lost unsent
	skipAfter.Store(math.MaxInt64)
	var wg sync.WaitGroup
	for _, w := range g.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := make([]job, 0, g.take)
			for j := range queue {
				batch = append(batch[:0], j)
			fill:
				for len(batch) < g.take {
					select {
					case j2, ok := <-queue:
						if !ok {
							break fill
						}
						batch = append(batch, j2)
					default:
						break fill
					}
				}
				if st.now() > skipAfter.Load() || stop.Load() {
					w.lose(st, int64(len(batch))*g.units)
					continue
				}
				w.do(st, batch)
			}
		}()
	}
	p := newPacers(1, g.rate, g.n, g.jitter)[0]
	for k := range p.n {
		at := p.at(k)
		if !waitUntil(st.epoch, at, stop) {
			break
		}
		st.sent.Add(g.units)
		queue <- job{at: at, k: k*g.kMul + g.kAdd}
	}
	st.markSendEnd()
	// Drain: what is still queued after --ack-timeout (+1s) is lost.
	skipAfter.Store(st.now() + int64(g.timeout+time.Second))
	close(queue)
	wg.Wait()
	if g.closeFn != nil {
		g.closeFn()
	}
}
