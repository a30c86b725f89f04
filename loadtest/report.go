package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the whole run: settings, one Run per target, and ratios of
// the first target to each baseline. It is what --json writes.
type Report struct {
	Started     time.Time `json:"started"`
	Args        []string  `json:"args"`
	Users       int       `json:"users"`
	Rooms       int       `json:"rooms"`
	RoomDist    string    `json:"room_dist"`
	Batch       int       `json:"batch"`
	Sockets     int       `json:"sockets"`
	Conns       int       `json:"conns"`
	Tokens      bool      `json:"tokens"`
	AckTimeoutS float64   `json:"ack_timeout_s"`
	TargetP99Ms float64   `json:"target_p99_ms"`
	MaxLossPct  float64   `json:"max_loss_pct"`
	Runs        []Run     `json:"runs"`
	Ratios      []Ratio   `json:"ratios,omitempty"`

	// The abuse scenario (--flood-rate, --compare-flood).
	FloodRate       float64          `json:"flood_rate,omitzero"` // datagrams/s; -1: as fast as it can
	FloodKind       string           `json:"flood_kind,omitempty"`
	FloodComparison *FloodComparison `json:"flood_comparison,omitempty"`
}

// FloodComparison is --compare-flood: the target's run without the flood
// against its run with it.
type FloodComparison struct {
	P99WithoutMs   float64 `json:"p99_without_flood_ms"`
	P99WithMs      float64 `json:"p99_with_flood_ms"`
	P99Ratio       float64 `json:"p99_ratio"` // with / without; 0 if without is 0
	LossWithoutPct float64 `json:"loss_without_flood_pct"`
	LossWithPct    float64 `json:"loss_with_flood_pct"`
	// Users offline at the end of each run (--check-online); -1: not checked.
	OfflineWithout int          `json:"offline_without_flood"`
	OfflineWith    int          `json:"offline_with_flood"`
	Users          int          `json:"users"` // the users the runs reached (OnlineCheck.Users)
	Flood          *FloodResult `json:"flood"`
}

// OnlineCheck is --check-online: after a run, how many of the simulated
// users presenced reports online (POST /v1/status).
type OnlineCheck struct {
	Users int `json:"users"` // users the run sent a heartbeat for, the ones checked
	// NotReached counts simulated users the run never sent a heartbeat
	// for (a run shorter than --interval): not checked, not lost.
	NotReached int     `json:"not_reached"`
	Online     int     `json:"online"`
	Offline    int     `json:"offline"` // not online, or missing from the answers
	Requests   int     `json:"requests"`
	TookS      float64 `json:"took_s"`
	Error      string  `json:"error,omitempty"`
}

// Run is one target: one step, or a sweep's steps.
type Run struct {
	Target    string       `json:"target"`
	Transport string       `json:"transport"`
	Sweep     bool         `json:"sweep"`
	Steps     []StepResult `json:"steps"`
	Best      int          `json:"best_step"`          // index of the highest sustainable step, -1 if none
	BestRate  float64      `json:"best_rate,omitzero"` // heartbeats/s of that step
	Capacity  string       `json:"capacity,omitempty"`
	Note      string       `json:"note,omitempty"`
	Error     string       `json:"error,omitempty"`
	Flood     bool         `json:"flood"`                  // a flood ran beside it (each step's flood field)
	Online    *OnlineCheck `json:"online_check,omitempty"` // --check-online
}

// StepResult is one rate held for one duration. Counts are heartbeats (an
// http-batch request counts its batch); latency is per request, from its
// intended send time.
type StepResult struct {
	OfferedRate    float64          `json:"offered_rate"` // heartbeats/s
	FlatOut        bool             `json:"flat_out"`     // --flat-out: no schedule; OfferedRate only sized the ack ring
	DurationS      float64          `json:"duration_s"`
	SendSpanS      float64          `json:"send_span_s"` // how long the schedule took to send
	Sent           int64            `json:"sent"`
	Answered       int64            `json:"answered"`
	Lost           int64            `json:"lost"`
	Late           int64            `json:"late_answers"`
	SentPerS       float64          `json:"sent_per_s"`
	AnsweredPerS   float64          `json:"answered_per_s"`
	LossPct        float64          `json:"loss_pct"`
	ErrorCount     int64            `json:"error_count"`
	ErrorPct       float64          `json:"error_pct"`
	Errors         map[string]int64 `json:"errors"`
	Latency        Latency          `json:"latency_ms"`
	CPUPct         float64          `json:"cpu_pct"` // -1: unknown
	CPUScope       string           `json:"cpu_scope"`
	LoadgenCPUPct  float64          `json:"loadgen_cpu_pct"`  // this process (senders, receivers, flood), % of one core, from getrusage; -1: unknown
	LoadgenCores   int              `json:"loadgen_cores"`    // CPUs the generator may use (GOMAXPROCS: its affinity)
	LoadgenWaitPct float64          `json:"loadgen_wait_pct"` // its threads waited runnable for a CPU, % of one core
	// LoadgenUsPerDatagram is the generator's CPU per datagram sent, its
	// ack received and matched included: 1e6 / it is what one core of the
	// generator can drive when nothing else is the limit.
	LoadgenUsPerDatagram float64      `json:"loadgen_us_per_datagram,omitzero"`
	Server               *ServerSide  `json:"server,omitempty"` // the target's own counters and CPU (--target-metrics, --target-pid)
	Limit                string       `json:"limit"`            // what held the step back: generator CPU, server CPU, loss, none
	Flood                *FloodResult `json:"flood,omitempty"`  // the flood beside this step, not in the figures above
	Sustainable          bool         `json:"sustainable"`
	NotOK                string       `json:"not_ok,omitempty"` // why the step is not sustainable (StepResult.notOK)
	Timeline             []Point      `json:"timeline"`
}

// Latency is in milliseconds.
type Latency struct {
	Count int64        `json:"count"`
	P50   float64      `json:"p50"`
	P90   float64      `json:"p90"`
	P99   float64      `json:"p99"`
	P999  float64      `json:"p99_9"`
	Max   float64      `json:"max"`
	Mean  float64      `json:"mean"`
	Curve []CurvePoint `json:"by_percentile"`
}

// CurvePoint is the latency at one percentile.
type CurvePoint struct {
	Pct float64 `json:"pct"`
	Ms  float64 `json:"ms"`
}

// Point is one second of a step.
type Point struct {
	T          float64 `json:"t_s"`
	SentPerS   float64 `json:"sent_per_s"`
	AnswerPerS float64 `json:"answered_per_s"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	Errors     int64   `json:"errors"`
	LossPct    float64 `json:"loss_pct"`
}

// Ratio compares the first target with one baseline.
type Ratio struct {
	Target    string  `json:"target"`
	Baseline  string  `json:"baseline"`
	Basis     string  `json:"basis"`      // what RateRatio divides
	RateRatio float64 `json:"rate_ratio"` // target / baseline
	P99Ratio  float64 `json:"p99_ratio"`  // target / baseline, at each run's reported step
}

// headline returns the step a run is judged by: the best of a sweep (or
// its first step if none passed), or the only step.
func (r *Run) headline() (StepResult, bool) {
	if len(r.Steps) == 0 {
		return StepResult{}, false
	}
	if r.Sweep && r.Best >= 0 {
		return r.Steps[r.Best], true
	}
	return r.Steps[0], true
}

func computeRatios(rep *Report) {
	if len(rep.Runs) < 2 {
		return
	}
	t := &rep.Runs[0]
	ts, ok := t.headline()
	if !ok {
		return
	}
	for i := 1; i < len(rep.Runs); i++ {
		b := &rep.Runs[i]
		if b.Target == t.Target {
			continue // the target again (--compare-flood): see FloodComparison
		}
		bs, ok := b.headline()
		if !ok {
			continue
		}
		r := Ratio{Target: t.Target, Baseline: b.Target}
		if t.Sweep {
			r.Basis = "highest sustainable rate"
			if b.BestRate > 0 {
				r.RateRatio = t.BestRate / b.BestRate
			}
		} else {
			r.Basis = "answered/s at the same offered rate"
			if bs.AnsweredPerS > 0 {
				r.RateRatio = ts.AnsweredPerS / bs.AnsweredPerS
			}
		}
		if bs.Latency.P99 > 0 {
			r.P99Ratio = ts.Latency.P99 / bs.Latency.P99
		}
		rep.Ratios = append(rep.Ratios, r)
	}
}

// writeText prints the report for a terminal.
func writeText(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "presenced loadtest: %d users, %d rooms (%s), tokens %v, ack-timeout %gs, target p99 %gms, max loss %g%%\n",
		rep.Users, rep.Rooms, rep.RoomDist, rep.Tokens, rep.AckTimeoutS, rep.TargetP99Ms, rep.MaxLossPct)
	for i := range rep.Runs {
		r := &rep.Runs[i]
		flood := ""
		if r.Flood {
			flood = fmt.Sprintf(", with a %s flood (%s) from %s", rep.FloodKind, floodRateText(rep.FloodRate), r.floodSource())
		}
		fmt.Fprintf(w, "\n== %s over %s%s ==\n", r.Target, r.Transport, flood)
		if r.Error != "" {
			fmt.Fprintf(w, "error: %s\n", r.Error)
		}
		if s, ok := r.headline(); ok && !r.Sweep {
			writeStepText(w, &s)
		}
		if r.Sweep {
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "step\toffered/s\tsent/s\tanswered/s\tloss %\terrors %\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\tCPU %\tgen CPU %\tlimit\tok\t")
			for j, s := range r.Steps {
				fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t\n",
					j+1, s.OfferedRate, s.SentPerS, s.AnsweredPerS, s.LossPct, s.ErrorPct,
					s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.P999, s.Latency.Max, cpuText(s.CPUPct), cpuText(s.LoadgenCPUPct), s.Limit, okText(s.Sustainable))
			}
			tw.Flush()
			for j, s := range r.Steps {
				if s.NotOK != "" {
					fmt.Fprintf(w, "step %d not ok: %s\n", j+1, s.NotOK)
				}
				if len(s.Errors) > 0 {
					fmt.Fprintf(w, "step %d errors: %s\n", j+1, errorsText(s.Errors))
				}
			}
			if r.Best >= 0 {
				fmt.Fprintf(w, "highest sustainable rate: %.0f heartbeats/s (step %d)\n", r.BestRate, r.Best+1)
				fmt.Fprintln(w, r.Capacity)
			} else {
				fmt.Fprintln(w, "highest sustainable rate: none (the first step already broke the limits)")
			}
			if len(r.Steps) > 0 {
				fmt.Fprintf(w, "CPU measured: %s\n", r.Steps[0].CPUScope)
			}
		}
		if r.Sweep {
			for j, s := range r.Steps {
				if s.Flood != nil {
					fmt.Fprintf(w, "step %d ", j+1)
					writeFloodText(w, s.Flood)
				}
			}
		}
		if r.Online != nil {
			writeOnlineText(w, r.Online)
		}
		if r.Note != "" {
			fmt.Fprintln(w, "note:", r.Note)
		}
	}
	if c := rep.FloodComparison; c != nil {
		fmt.Fprintln(w, "\n== flood comparison ==")
		fmt.Fprintf(w, "p99 without flood %.3f ms, with flood %.3f ms: p99 with flood / p99 without = %.2f\n", c.P99WithoutMs, c.P99WithMs, c.P99Ratio)
		fmt.Fprintf(w, "loss without flood %.3f%%, with flood %.3f%%\n", c.LossWithoutPct, c.LossWithPct)
		if c.OfflineWithout >= 0 || c.OfflineWith >= 0 {
			fmt.Fprintf(w, "users offline at end: without flood %s, with flood %s, of %d reached\n", offlineText(c.OfflineWithout), offlineText(c.OfflineWith), c.Users)
		}
		if f := c.Flood; f != nil {
			fmt.Fprintf(w, "flood: %s %s from %s, %.0f datagrams/s sent, %.0f replies/s (%.2f%% of sent)\n",
				f.Kind, floodRateText(f.OfferedRate), f.Source, f.SentPerS, f.RepliesPerS, f.ReplyPct)
		}
	}
	if len(rep.Ratios) > 0 {
		fmt.Fprintln(w, "\n== ratios ==")
		for _, q := range rep.Ratios {
			fmt.Fprintf(w, "%s / %s: rate %.3fx (%s), p99 %.2fx\n", q.Target, q.Baseline, q.RateRatio, q.Basis, q.P99Ratio)
		}
	}
}

func writeStepText(w io.Writer, s *StepResult) {
	offered := fmt.Sprintf("%.0f/s", s.OfferedRate)
	if s.FlatOut {
		offered = "flat out"
	}
	fmt.Fprintf(w, "offered %s  sent %.0f/s  answered %.0f/s  (sent %d, answered %d, lost %d, late %d over %.1fs)\n",
		offered, s.SentPerS, s.AnsweredPerS, s.Sent, s.Answered, s.Lost, s.Late, s.SendSpanS)
	fmt.Fprintf(w, "loss %.3f%%  errors %d (%.3f%%) %s\n", s.LossPct, s.ErrorCount, s.ErrorPct, errorsText(s.Errors))
	l := s.Latency
	fmt.Fprintf(w, "latency ms (from intended send, %d requests): p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
		l.Count, l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
	if s.NotOK != "" {
		fmt.Fprintf(w, "not ok: %s\n", s.NotOK)
	}
	fmt.Fprintf(w, "CPU %s (%s); load generator %s%% of one core (it may use %d; waited %.0f%% for a CPU)\n", cpuText(s.CPUPct), s.CPUScope, cpuText(s.LoadgenCPUPct), s.LoadgenCores, s.LoadgenWaitPct)
	if v := s.Server; v != nil {
		writeServerText(w, v)
	}
	fmt.Fprintf(w, "limit: %s\n", s.Limit)
	if s.Flood != nil {
		writeFloodText(w, s.Flood)
	}
}

func writeServerText(w io.Writer, v *ServerSide) {
	if v.Error != "" {
		fmt.Fprintf(w, "server: %s\n", v.Error)
	}
	var b strings.Builder
	if v.Heartbeats > 0 || v.DatagramsPerS > 0 {
		fmt.Fprintf(&b, "took in %.0f datagrams/s, replied %.0f/s, %d heartbeats, %d log records (%.3f per heartbeat); ",
			v.DatagramsPerS, v.RepliesPerS, v.Heartbeats, v.WALRecords, v.RecordsPerHeartbeat)
	}
	if v.CPUSeconds >= 0 {
		fmt.Fprintf(&b, "CPU %.2fs on %d cores (waited %.2fs for a CPU) = %.2f us per heartbeat; ",
			v.CPUSeconds, v.CPUCores, v.RunqueueWaitS, v.CPUUsPerHeartbeat)
	}
	fmt.Fprintf(&b, "UDP queue drops %d, at the server's port %d", v.KernelDrops, v.ServerQueueDrops)
	if v.ReportedKernelDrops >= 0 {
		fmt.Fprintf(&b, ", reported by the server %d", v.ReportedKernelDrops)
	}
	if v.Shedding {
		b.WriteString("; the server is shedding (overload)")
	}
	fmt.Fprintf(w, "server: %s\n", b.String())
}

func writeFloodText(w io.Writer, f *FloodResult) {
	fmt.Fprintf(w, "flood (%s, %s, from %s over %d sockets; not in the figures above): sent %d (%.0f/s over %.1fs), send errors %d, replies %d (%.0f/s, %.2f%% of sent) %s\n",
		f.Kind, floodRateText(f.OfferedRate), f.Source, f.Sockets, f.Sent, f.SentPerS, f.SpanS, f.SendErrors,
		f.Replies, f.RepliesPerS, f.ReplyPct, errorsText(f.ReplyStatuses))
}

func writeOnlineText(w io.Writer, c *OnlineCheck) {
	if c.Error != "" {
		fmt.Fprintf(w, "online check failed: %s\n", c.Error)
		return
	}
	fmt.Fprintf(w, "users offline at end: %d of %d reached (POST /v1/status, %d requests, %.2fs)%s\n", c.Offline, c.Users, c.Requests, c.TookS, notReachedText(c))
}

func offlineText(n int) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprint(n)
}

// floodSource is the flood's source address, from the run's first step.
func (r *Run) floodSource() string {
	for _, s := range r.Steps {
		if s.Flood != nil {
			return s.Flood.Source
		}
	}
	return "?"
}

// computeFloodComparison fills rep.FloodComparison from the target's run
// without the flood (Runs[0]) and with it (Runs[1]).
func computeFloodComparison(rep *Report) {
	if len(rep.Runs) < 2 || rep.Runs[0].Flood || !rep.Runs[1].Flood {
		return
	}
	a, ok1 := rep.Runs[0].headline()
	b, ok2 := rep.Runs[1].headline()
	if !ok1 || !ok2 {
		return
	}
	c := &FloodComparison{
		P99WithoutMs: a.Latency.P99, P99WithMs: b.Latency.P99, LossWithoutPct: a.LossPct, LossWithPct: b.LossPct,
		OfflineWithout: -1, OfflineWith: -1, Users: rep.Users, Flood: b.Flood,
	}
	if a.Latency.P99 > 0 {
		c.P99Ratio = b.Latency.P99 / a.Latency.P99
	}
	if o := rep.Runs[0].Online; o != nil && o.Error == "" {
		c.OfflineWithout, c.Users = o.Offline, o.Users // the users the run reached
	}
	if o := rep.Runs[1].Online; o != nil && o.Error == "" {
		c.OfflineWith = o.Offline
	}
	rep.FloodComparison = c
}

func cpuText(p float64) string {
	if p < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f", p)
}

// notReachedText says how many users a run shorter than --interval never
// heartbeated (and so did not check).
func notReachedText(c *OnlineCheck) string {
	if c.NotReached == 0 {
		return ""
	}
	return fmt.Sprintf("; %d users not reached (the run was shorter than --interval), not checked", c.NotReached)
}

// notOK says why a step is not sustainable ("" when it is): which limit
// it broke, with the measured figure and the limit.
func (r *StepResult) notOK(cfg *Config) string {
	switch {
	case r.Sent == 0:
		return "nothing was sent"
	case r.Latency.Count == 0:
		return "no request was answered"
	}
	var why []string
	if limit := float64(cfg.TargetP99) / 1e6; r.Latency.P99 > limit {
		why = append(why, fmt.Sprintf("p99 %.3g ms > --target-p99 %.3g ms", r.Latency.P99, limit))
	}
	if r.LossPct+r.ErrorPct > cfg.MaxLoss {
		why = append(why, fmt.Sprintf("loss %.3g%% + errors %.3g%% > --max-loss %.3g%%", r.LossPct, r.ErrorPct, cfg.MaxLoss))
	}
	return strings.Join(why, "; ")
}

func okText(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func errorsText(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('(')
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	b.WriteByte(')')
	return b.String()
}

// writeFile writes a report file through fn, then closes it.
func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cannot write report: %w", err)
	}
	if err := fn(f); err != nil {
		f.Close()
		return fmt.Errorf("cannot write report %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cannot write report %s: %w", path, err)
	}
	return nil
}

func writeJSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
