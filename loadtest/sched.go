package loadtest

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// pacer is the open-loop schedule of one sender goroutine: its k-th job is
// due phase + (k + jitter*(u-0.5)) * gap nanoseconds after the epoch, u
// uniform in [0,1). With jitter <= 1 a job stays inside its own slot, so the
// order holds and the mean rate is exact.
type pacer struct {
	gap    float64 // ns between this sender's jobs
	phase  float64 // ns offset of this sender's first job
	jitter float64
	n      int64 // jobs this sender sends
	rng    *rand.Rand
}

// newPacers splits n jobs at rate jobs/s over g senders, interleaved:
// sender i sends global jobs i, i+g, i+2g, ...
func newPacers(g int, rate float64, n int64, jitter float64) []pacer {
	out := make([]pacer, g)
	for i := range out {
		cnt := int64(0)
		if n > int64(i) {
			cnt = (n - int64(i) + int64(g) - 1) / int64(g)
		}
		out[i] = pacer{
			gap:    float64(g) * 1e9 / rate,
			phase:  float64(i) * 1e9 / rate,
			jitter: jitter,
			n:      cnt,
			rng:    rand.New(rand.NewPCG(uint64(i)+1, 7)),
		}
	}
	return out
}

// at returns when job k is due, in ns after the epoch.
func (p *pacer) at(k int64) int64 {
	x := float64(k)
	if p.jitter > 0 {
		x += p.jitter * (p.rng.Float64() - 0.5)
	}
	return int64(p.phase + x*p.gap)
}

// waitUntil sleeps until at (ns after epoch), or returns at once when it is
// past: a late sender catches up by sending at once, never by skipping.
// It returns false if stop was set.
func waitUntil(epoch time.Time, at int64, stop *atomic.Bool) bool {
	for {
		if stop.Load() {
			return false
		}
		d := time.Duration(at) - time.Since(epoch)
		if d <= 0 {
			return true
		}
		if d > 100*time.Millisecond {
			d = 100 * time.Millisecond // check stop now and then
		}
		time.Sleep(d)
	}
}
