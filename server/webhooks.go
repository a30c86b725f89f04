package server

import (
	"fmt"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/cluster"
	"github.com/presenced/presenced/server/internal/events"
	"github.com/presenced/presenced/server/internal/webhook"
)

// startWebhooks starts webhook delivery (--webhook-url): on a single node
// from the event bus through the delivery queue (in the write-ahead store
// with --data-dir, else in memory), in a cluster from the event stream's
// consumer group. A single node subscribes from the start of this run's
// history, so the timeout leaves the replay emitted are delivered too.
func (s *Server) startWebhooks() error {
	wc := s.cfg.Webhook
	if wc.URL == "" {
		return nil
	}
	wc.Logger = s.log.With("component", "webhook")
	var (
		d   *webhook.Deliverer
		err error
	)
	if s.cl != nil {
		d, err = webhook.StartCluster(wc, s.cl.Client(), s.cl.StreamKey(), s.cl.ID(), cluster.DecodeEntry)
	} else {
		var q *persist.Queue
		if s.store != nil {
			if q, err = s.store.OpenQueue(); err != nil {
				return fmt.Errorf("cannot start webhooks: %w", err)
			}
		} else {
			s.log.Warn("no --data-dir: undelivered webhook events are kept in memory and lost on restart")
		}
		d, err = webhook.StartLocal(wc, s.bus, q, &events.ID{Ms: uint64(s.start.UnixMilli())})
	}
	if err != nil {
		return &UsageError{fmt.Errorf("--webhook-url: %w", err)}
	}
	s.hooks.Store(d)
	return nil
}

// registerWebhookMetrics adds the webhook metrics when webhooks are on;
// they read zero until Start has started delivery.
func (s *Server) registerWebhookMetrics() {
	if s.cfg.Webhook.URL == "" {
		return
	}
	r := s.reg
	stats := func() webhook.Stats {
		if h := s.hooks.Load(); h != nil {
			return h.Stats()
		}
		return webhook.Stats{}
	}
	r.gaugeFunc("presenced_webhook_queue_depth", "Events not yet delivered to the webhook (single node: the delivery queue; cluster: the consumer group's pending and lag, as the lease holder sees it).", func() float64 { return float64(stats().Depth) })
	r.gaugeFunc("presenced_webhook_queue_bytes", "Memory of the in-memory webhook queue (single node without --data-dir; bounded by --webhook-max-queue-bytes), else 0.", func() float64 { return float64(stats().QueueBytes) })
	r.gaugeFunc("presenced_webhook_oldest_age_seconds", "Age of the oldest event not yet delivered to the webhook (0 when none).", func() float64 { return stats().OldestAge.Seconds() })
	r.counterFunc("presenced_webhook_delivered_events_total", "Events delivered to the webhook (answered 2xx).", func() float64 { return float64(stats().Delivered) })
	r.counterFunc("presenced_webhook_dead_letters_total", "Events given up: the receiver answered a 4xx other than 408/429, or the batch was older than --webhook-max-age.", func() float64 { return float64(stats().DeadLettered) })
	r.counterFunc("presenced_webhook_lost_events_total", "Events that could not be queued for the webhook (--webhook-max-queue full, or trimmed from the event stream unread); a reset event was delivered instead.", func() float64 { return float64(stats().Lost) })
	r.counterFuncVec("presenced_webhook_requests_total", "Webhook POSTs by answer: status class, or error (no answer).", "class", func(emit func(string, float64)) {
		st := stats()
		for i, l := range webhook.ClassLabels {
			emit(l, float64(st.Attempts[i]))
		}
	})
	r.histogramFunc("presenced_webhook_request_duration_seconds", "Webhook POST latency in seconds, answered or not.", webhook.LatencyBounds, func() ([]uint64, float64) {
		st := stats()
		return st.Latency, st.LatencySum
	})
}
