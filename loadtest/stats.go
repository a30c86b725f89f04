package loadtest

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// errKind is a kind of failed request, counted per step.
type errKind int

const (
	errSend      errKind = iota // the send syscall failed
	errConn                     // connection or transport error (HTTP, Redis, ICMP refused)
	errHTTP429                  // HTTP 429
	errHTTP4xx                  // other HTTP 4xx
	errHTTP5xx                  // HTTP 5xx (503 while not ready)
	errHTTPOther                // any other non-200 status
	errBadReply                 // a reply that does not decode or match
	errRejected                 // items rejected inside an http-batch answer
	errRedis                    // a Redis error reply
	errStatus                   // first of the UDP item statuses, errStatus+status-1
	numErrKinds  = errStatus + 9
)

var errKindNames = [numErrKinds]string{
	errSend: "send", errConn: "conn", errHTTP429: "http_429", errHTTP4xx: "http_4xx",
	errHTTP5xx: "http_5xx", errHTTPOther: "http_other", errBadReply: "bad_reply",
	errRejected: "batch_rejected", errRedis: "redis",
	errStatus + 0: "status_bad_id", errStatus + 1: "status_bad_token",
	errStatus + 2: "status_token_expired", errStatus + 3: "status_unknown_key",
	errStatus + 4: "status_wrong_room", errStatus + 5: "status_rate_limited",
	errStatus + 6: "status_too_many_rooms", errStatus + 7: "status_unavailable",
	errStatus + 8: "status_unknown",
}

// statusKind maps a non-ok UDP item status to its error kind.
func statusKind(s uint8) errKind {
	if s == 0 || s > 8 {
		return errStatus + 8
	}
	return errStatus + errKind(s) - 1
}

// newHist returns a latency histogram in nanoseconds, 1µs..100s at three
// significant digits (about 130 KB).
func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1000, maxHistogramLatencyNs, 3)
}

// shard is one histogram that one or a few recording goroutines write to.
type shard struct {
	mu struct {
		sync.Mutex
		h *hdrhistogram.Histogram
	}
}

func (s *shard) record(ns int64) {
	if ns < 1000 {
		ns = 1000
	} else if ns > maxHistogramLatencyNs {
		ns = maxHistogramLatencyNs
	}
	s.mu.Lock()
	_ = s.mu.h.RecordValue(ns)
	s.mu.Unlock()
}

// stats are one step's counters and latencies. Counts are in heartbeats
// (an http-batch request counts its batch); latencies are per request.
type stats struct {
	epoch  time.Time // zero of the step's schedule
	sent   atomic.Int64
	answer atomic.Int64
	lost   atomic.Int64
	late   atomic.Int64 // answers that came after their request was counted lost
	// sendEnd is when the last sender finished its schedule, ns after epoch.
	sendEnd atomic.Int64
	errs    [numErrKinds]atomic.Int64
	shards  []*shard

	// Owned by the progress goroutine (and the step after it stopped).
	total    *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram
	timeline []Point
	last     counters
	lastT    time.Duration
}

type counters struct {
	sent, answer, lost, errs int64
}

func newStats(epoch time.Time, nshards int) *stats {
	st := &stats{epoch: epoch, total: newHist(), interval: newHist()}
	for range nshards {
		s := &shard{}
		s.mu.h = newHist()
		st.shards = append(st.shards, s)
	}
	return st
}

// shard returns the histogram shard of recording goroutine i.
func (st *stats) shard(i int) *shard { return st.shards[i%len(st.shards)] }

// now returns the nanoseconds since the step's epoch (monotonic clock).
func (st *stats) now() int64 { return int64(time.Since(st.epoch)) }

// markSendEnd records that a sender finished its schedule now.
func (st *stats) markSendEnd() {
	now := st.now()
	for {
		old := st.sendEnd.Load()
		if now <= old || st.sendEnd.CompareAndSwap(old, now) {
			return
		}
	}
}

func (st *stats) countErr(k errKind, n int64) { st.errs[k].Add(n) }

func (st *stats) errTotal() int64 {
	var n int64
	for i := range st.errs {
		n += st.errs[i].Load()
	}
	return n
}

// collect moves the shards' latencies into the interval and total
// histograms and appends a timeline point. Only the progress goroutine
// calls it (and the step once that goroutine has stopped).
func (st *stats) collect() Point {
	st.interval.Reset()
	for _, s := range st.shards {
		s.mu.Lock()
		st.interval.Merge(s.mu.h)
		s.mu.h.Reset()
		s.mu.Unlock()
	}
	st.total.Merge(st.interval)
	t := time.Since(st.epoch)
	cur := counters{st.sent.Load(), st.answer.Load(), st.lost.Load(), st.errTotal()}
	dt := (t - st.lastT).Seconds()
	if dt <= 0 {
		dt = 1e-9
	}
	p := Point{
		T:          t.Seconds(),
		SentPerS:   float64(cur.sent-st.last.sent) / dt,
		AnswerPerS: float64(cur.answer-st.last.answer) / dt,
		Errors:     cur.errs - st.last.errs,
	}
	if n := cur.sent - st.last.sent; n > 0 {
		p.LossPct = 100 * float64(cur.lost-st.last.lost) / float64(n)
	}
	if st.interval.TotalCount() > 0 {
		p.P50Ms = nsToMs(st.interval.ValueAtQuantile(50))
		p.P99Ms = nsToMs(st.interval.ValueAtQuantile(99))
	}
	st.last, st.lastT = cur, t
	st.timeline = append(st.timeline, p)
	return p
}

func nsToMs(ns int64) float64 { return float64(ns) / 1e6 }
