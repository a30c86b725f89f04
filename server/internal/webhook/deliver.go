package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presenced/presenced/internal/routine"
)

// batch is what a source hands the deliverer: event JSON objects in
// delivery order, and how to acknowledge them once delivered or
// dead-lettered.
type batch struct {
	evs    [][]byte
	oldest time.Time // when the oldest event was decided or queued (max-age)
	ack    func() error
}

// source is where a deliverer takes batches from: the single-node queue
// (local.go) or the cluster's consumer group (redis.go).
type source interface {
	// next blocks until a batch is ready (full, or its oldest event waited
	// Config.Linger) or ctx ends (nil, ctx.Err()). Not concurrent.
	next(ctx context.Context) (*batch, error)
	// depth returns the undelivered events and the age of the oldest.
	depth() (n int64, oldest time.Duration)
	// stop ends the source's own goroutines.
	stop()
}

// Status classes for metrics.
const (
	Class2xx = iota
	Class3xx
	Class4xx
	Class5xx
	ClassError // no answer: connect error, timeout
	NumClasses
)

// ClassLabels name the status classes in metrics.
var ClassLabels = [NumClasses]string{"2xx", "3xx", "4xx", "5xx", "error"}

// LatencyBounds are the upper bounds, in seconds, of the POST latency histogram.
var LatencyBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Stats are a deliverer's counters.
type Stats struct {
	Depth        int64         // events not yet delivered
	QueueBytes   int64         // memory of the in-memory queue (single node without a data directory), else 0
	OldestAge    time.Duration // age of the oldest undelivered event
	Attempts     [NumClasses]uint64
	Delivered    uint64 // events delivered (2xx)
	DeadLettered uint64 // events given up: a 4xx other than 408/429, or older than MaxAge
	Lost         uint64 // events dropped before they could be queued (queue full, stream trimmed)
	Latency      []uint64
	LatencySum   float64
}

// Deliverer POSTs batches from one source, one at a time: a batch is
// retried until delivered or dead-lettered before the next is taken, so
// events of a room arrive in order.
type Deliverer struct {
	cfg    Config
	log    *slog.Logger
	secret atomic.Pointer[[]byte] // the signing secret; nil: unsigned
	client *http.Client
	src    source
	now    func() time.Time

	attempts  [NumClasses]atomic.Uint64
	delivered atomic.Uint64
	dead      atomic.Uint64
	lost      atomic.Uint64
	lat       []atomic.Uint64
	latSumNs  atomic.Uint64

	cancel   context.CancelFunc
	routines routine.Group
	once     sync.Once
}

func newDeliverer(cfg Config) (*Deliverer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Deliverer{cfg: cfg, log: cfg.Logger, now: time.Now, lat: make([]atomic.Uint64, len(LatencyBounds)+1)}
	if d.log == nil {
		d.log = slog.Default()
	}
	if cfg.SecretFile != "" {
		s, err := LoadSecret(cfg.SecretFile)
		if err != nil {
			return nil, err
		}
		d.secret.Store(&s)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	d.client = &http.Client{Timeout: cfg.Timeout, Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return d, nil
}

// SetSecret replaces the signing secret (a rotation: the next request is
// signed with it; LoadSecret reads one from a keyring file). Safe to call
// while delivering.
func (d *Deliverer) SetSecret(secret []byte) { d.secret.Store(&secret) }

// start runs the delivery loop.
func (d *Deliverer) start(src source) {
	d.src = src
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.routines.Go("webhook delivery", func() { d.loop(ctx) })
}

// Stop ends delivery: an in-flight POST is cancelled and its batch stays
// undelivered (queued, or pending in the consumer group) for the next run
// or another node. It waits for the deliverer's goroutines.
func (d *Deliverer) Stop() {
	d.once.Do(func() {
		d.cancel()
		d.routines.Wait()
		d.src.stop()
		d.client.CloseIdleConnections()
	})
}

// Stats returns the counters.
func (d *Deliverer) Stats() Stats {
	st := Stats{Delivered: d.delivered.Load(), DeadLettered: d.dead.Load(), Lost: d.lost.Load()}
	st.Depth, st.OldestAge = d.src.depth()
	if ls, ok := d.src.(*localSource); ok {
		if qb, ok := ls.q.(queueBytes); ok {
			st.QueueBytes = qb.Bytes()
		}
	}
	for i := range st.Attempts {
		st.Attempts[i] = d.attempts[i].Load()
	}
	st.Latency = make([]uint64, len(d.lat))
	for i := range d.lat {
		st.Latency[i] = d.lat[i].Load()
	}
	st.LatencySum = float64(d.latSumNs.Load()) / 1e9
	return st
}

func (d *Deliverer) loop(ctx context.Context) {
	failing := false // log a failure streak once
	for {
		b, err := d.src.next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				d.log.Warn("cannot read webhook events; retrying every second", "err", err)
				failing = true
			}
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		if failing {
			d.log.Info("reading webhook events again")
			failing = false
		}
		if !d.deliver(ctx, b) {
			return // stopping: the batch stays undelivered
		}
		for b.ack != nil {
			err := b.ack()
			if err == nil {
				break
			}
			d.log.Warn("cannot acknowledge delivered webhook events; retrying", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
		}
	}
}

// backoff returns the wait before retry n (from 1): 100ms doubling, capped
// at MaxBackoff, with jitter in [d/2, d).
func (d *Deliverer) backoff(n int) time.Duration {
	w := 100 * time.Millisecond << min(n-1, 20)
	w = min(w, d.cfg.MaxBackoff)
	return w/2 + rand.N(w/2+1)
}

// deliver POSTs b until it is delivered or dead-lettered; false when ctx
// ended first. A 413 splits the batch in two halves delivered in order (a
// single event the receiver finds too large is dead-lettered); a 3xx or
// another 4xx but 408 and 429 is dead-lettered at once (retrying cannot
// help); anything else is retried with backoff, waiting at least what a
// Retry-After header asks (up to MaxBackoff), until MaxAge.
func (d *Deliverer) deliver(ctx context.Context, b *batch) bool {
	body := make([]byte, 0, 16+len(b.evs)*160)
	body = append(body, `{"events":[`...)
	for i, e := range b.evs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, e...)
	}
	body = append(body, "]}"...)
	n := int64(len(b.evs))
	for try := 1; ; try++ {
		code, wait, err := d.post(ctx, body)
		if ctx.Err() != nil {
			return false
		}
		switch {
		case err == nil && code >= 200 && code < 300:
			d.delivered.Add(uint64(n))
			return true
		case err == nil && code == http.StatusRequestEntityTooLarge && len(b.evs) > 1:
			d.log.Warn("webhook receiver refused a batch as too large; splitting it", "events", n)
			half := len(b.evs) / 2
			return d.deliver(ctx, &batch{evs: b.evs[:half], oldest: b.oldest}) &&
				d.deliver(ctx, &batch{evs: b.evs[half:], oldest: b.oldest})
		case err == nil && code >= 300 && code < 500 && code != 408 && code != 429:
			d.dead.Add(uint64(n))
			d.log.Error("webhook receiver refused a batch; dead-lettered, not retried", "status", code, "events", n,
				"first", firstID(b.evs))
			return true
		}
		if age := d.now().Sub(b.oldest); age > d.cfg.MaxAge {
			d.dead.Add(uint64(n))
			d.log.Error("webhook batch older than --webhook-max-age; dead-lettered", "age", age, "events", n,
				"status", code, "err", err, "first", firstID(b.evs))
			return true
		}
		if try == 1 || try%10 == 0 {
			d.log.Warn("webhook delivery failed; retrying with backoff", "status", code, "err", err, "try", try, "events", n)
		}
		if !sleepCtx(ctx, max(d.backoff(try), min(wait, d.cfg.MaxBackoff))) {
			return false
		}
	}
}

// retryAfter parses a Retry-After header: delay seconds or an HTTP date; 0
// when absent or unreadable.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if secs, err := strconv.Atoi(h); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// post sends one attempt and returns the status code (0 with an error when
// there was no answer) and the wait its Retry-After header asks for.
func (d *Deliverer) post(ctx context.Context, body []byte) (int, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, 0, fmt.Errorf("cannot build webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "presenced-webhook")
	if sec := d.secret.Load(); sec != nil {
		req.Header.Set(SignatureHeader, Sign(*sec, d.now().Unix(), body))
	}
	t0 := time.Now()
	resp, err := d.client.Do(req)
	el := time.Since(t0)
	d.lat[sort.SearchFloat64s(LatencyBounds, el.Seconds())].Add(1)
	d.latSumNs.Add(uint64(el))
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return 0, 0, err
		}
		d.attempts[ClassError].Add(1)
		return 0, 0, fmt.Errorf("cannot post webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	c := ClassError
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		c = Class2xx
	case resp.StatusCode < 400:
		c = Class3xx
	case resp.StatusCode < 500:
		c = Class4xx
	default:
		c = Class5xx
	}
	d.attempts[c].Add(1)
	return resp.StatusCode, retryAfter(resp.Header.Get("Retry-After"), d.now()), nil
}

func firstID(evs [][]byte) string {
	if len(evs) == 0 {
		return ""
	}
	e := evs[0]
	if i := bytes.Index(e, []byte(`"id":"`)); i >= 0 {
		e = e[i+6:]
		if j := bytes.IndexByte(e, '"'); j >= 0 {
			return string(e[:j])
		}
	}
	return ""
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
