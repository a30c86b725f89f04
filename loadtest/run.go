package loadtest

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// generator is one transport's sender for one step.
type generator interface {
	run(st *stats, stop *atomic.Bool)
}

// addrs are where a target listens.
type addrs struct{ udp, http, redis string }

const histShards = 16

// runStep drives one target at rate heartbeats/s for dur and measures it.
func runStep(ctx context.Context, cfg *Config, pop *population, p plan, a addrs, rate float64, dur time.Duration, label string, stderr io.Writer) (StepResult, error) {
	n := int64(math.Round(rate * dur.Seconds()))
	res := StepResult{OfferedRate: rate, DurationS: dur.Seconds(), FlatOut: cfg.FlatOut && p.transport == "udp"}
	var gens []generator
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	switch p.transport {
	case "udp":
		g, err := newUDPGen(cfg, pop, a.udp, rate, n, dur, 1, 0, 0)
		if err != nil {
			return res, err
		}
		gens = append(gens, g)
	case "http", "http-batch":
		batch := 1
		if p.transport == "http-batch" {
			batch = cfg.Batch
		}
		gens = append(gens, newHTTPGen(cfg, pop, a.http, rate, n, batch, 1, 0, 0))
	case "mix":
		g, err := newUDPGen(cfg, pop, a.udp, rate/2, n/2, dur, 2, 0, 0)
		if err != nil {
			return res, err
		}
		gens = append(gens, g, newHTTPGen(cfg, pop, a.http, rate/2, n-n/2, 1, 2, 1, cfg.Sockets))
	case transportRedis:
		gens = append(gens, newRedisGen(cfg, pop, a.redis, rate, n, p.target == TargetRedisPipelined, 0))
	default:
		return res, fmt.Errorf("cannot run transport %q", p.transport)
	}
	var fl *flooder
	if p.flood {
		var err error
		if fl, err = newFlooder(cfg, pop, a.udp, dur); err != nil {
			return res, err
		}
		closers = append(closers, fl.close)
	}

	var stop atomic.Bool
	st := newStats(time.Now(), histShards)
	hard := time.AfterFunc(dur+cfg.AckTimeout+5*time.Second, func() { stop.Store(true) })
	defer hard.Stop()
	ctxDone := context.AfterFunc(ctx, func() { stop.Store(true) })
	defer ctxDone()

	// --target-pid is presenced's process; in-process baselines and Redis
	// are measured as the whole machine.
	cpu := cpuSampler{}
	if p.target == TargetPresenced {
		cpu.pid = cfg.TargetPID
	}
	cpu.begin()
	self0, selfT0, selfWait0 := selfCPUSeconds(), time.Now(), runqueueWait(os.Getpid())
	var probe *serverProbe
	if p.target == TargetPresenced {
		probe = newServerProbe(cfg.TargetMetrics, cfg.TargetPID, udpPort(a.udp))
	}
	progressDone := make(chan struct{})
	progressStop := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		var lastFlood, lastReplies int64
		lastT := time.Now()
		for {
			select {
			case <-progressStop:
				return
			case <-t.C:
				pt := st.collect()
				if !cfg.Quiet {
					floodText := ""
					if fl != nil {
						now := time.Now()
						dt := max(now.Sub(lastT).Seconds(), 1e-9)
						fs, fr := fl.sent.Load(), fl.replies.Load()
						floodText = fmt.Sprintf("  | flood sent %8.0f/s replies %6.0f/s", float64(fs-lastFlood)/dt, float64(fr-lastReplies)/dt)
						lastFlood, lastReplies, lastT = fs, fr, now
					}
					fmt.Fprintf(stderr, "%s t=%4.0fs  sent %8.0f/s  answered %8.0f/s  p50 %7.3fms  p99 %7.3fms  errors %d  loss %.3f%%%s\n",
						label, pt.T, pt.SentPerS, pt.AnswerPerS, pt.P50Ms, pt.P99Ms, pt.Errors, pt.LossPct, floodText)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	if fl != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fl.run(st.epoch, &stop)
		}()
	}
	for _, g := range gens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.run(st, &stop)
		}()
	}
	wg.Wait()
	res.CPUPct, res.CPUScope = cpu.end()
	res.LoadgenCPUPct = -1
	if self1 := selfCPUSeconds(); self0 >= 0 && self1 >= 0 {
		res.LoadgenCPUPct = 100 * (self1 - self0) / max(time.Since(selfT0).Seconds(), 1e-9)
	}
	if w := runqueueWait(os.Getpid()); w >= 0 && selfWait0 >= 0 {
		res.LoadgenWaitPct = 100 * max(0, w-selfWait0) / max(time.Since(selfT0).Seconds(), 1e-9)
	}
	res.LoadgenCores = runtime.GOMAXPROCS(0)
	close(progressStop)
	<-progressDone
	st.collect()
	res.fill(st, dur)
	if res.LoadgenCPUPct > 0 && res.Sent > 0 {
		res.LoadgenUsPerDatagram = res.LoadgenCPUPct / 100 * time.Since(selfT0).Seconds() / float64(res.Sent) * 1e6
	}
	if probe != nil {
		res.Server = probe.end(res.SendSpanS, res.Answered)
		if cfg.NoAck && res.Server.DatagramsPerS > 0 {
			res.AnsweredPerS = 0 // nothing asks for an answer; intake is Server.DatagramsPerS
		}
	}
	res.Limit = limitOf(&res, cfg)
	if fl != nil {
		res.Flood = fl.result(len(fl.socks))
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

// fill computes the step's results from its stats.
func (r *StepResult) fill(st *stats, dur time.Duration) {
	r.Sent, r.Answered, r.Lost, r.Late = st.sent.Load(), st.answer.Load(), st.lost.Load(), st.late.Load()
	// Rates are over the time the schedule took: longer than dur if the
	// generator fell behind.
	secs := max(dur.Seconds(), time.Duration(st.sendEnd.Load()).Seconds())
	r.SendSpanS = secs
	r.SentPerS = float64(r.Sent) / secs
	r.AnsweredPerS = float64(r.Answered) / secs
	r.Errors = map[string]int64{}
	var errs int64
	for i := range st.errs {
		if v := st.errs[i].Load(); v > 0 {
			r.Errors[errKindNames[i]] = v
			errs += v
		}
	}
	r.ErrorCount = errs
	if r.Sent > 0 {
		r.LossPct = 100 * float64(r.Lost) / float64(r.Sent)
		r.ErrorPct = 100 * float64(errs) / float64(r.Sent)
	}
	h := st.total
	r.Latency = Latency{Count: h.TotalCount()}
	if h.TotalCount() > 0 {
		r.Latency.P50 = nsToMs(h.ValueAtQuantile(50))
		r.Latency.P90 = nsToMs(h.ValueAtQuantile(90))
		r.Latency.P99 = nsToMs(h.ValueAtQuantile(99))
		r.Latency.P999 = nsToMs(h.ValueAtQuantile(99.9))
		r.Latency.Max = nsToMs(h.Max())
		r.Latency.Mean = h.Mean() / 1e6
		for _, q := range curveQuantiles {
			r.Latency.Curve = append(r.Latency.Curve, CurvePoint{Pct: q, Ms: nsToMs(h.ValueAtQuantile(q))})
		}
	}
	r.Timeline = st.timeline
}

var curveQuantiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 97, 98, 99, 99.5, 99.7, 99.8, 99.9, 99.95, 99.97, 99.99, 99.995, 99.999, 100}

// runTarget runs one plan: a fixed step, or a sweep.
func runTarget(ctx context.Context, cfg *Config, pop *population, p plan, a addrs, stderr io.Writer) Run {
	run := Run{Target: p.target, Transport: p.transport, Sweep: cfg.Sweep, Best: -1, Flood: p.flood}
	if p.target == cfg.Target && cfg.Name != "" {
		run.Target = cfg.Name
	}
	label := fmt.Sprintf("[%s/%s]", run.Target, p.transport)
	if p.flood {
		label = fmt.Sprintf("[%s/%s +flood]", run.Target, p.transport)
	}
	if !cfg.Sweep {
		res, err := runStep(ctx, cfg, pop, p, a, cfg.baseRate(), cfg.Duration, label, stderr)
		res.NotOK = res.notOK(cfg)
		res.Sustainable = res.NotOK == ""
		run.Steps = append(run.Steps, res)
		if err != nil {
			run.Error = err.Error()
		}
		return run
	}
	start := time.Now()
	rate := cfg.baseRate()
	for i := 0; i < maxSweepSteps && ctx.Err() == nil; i++ {
		if i > 0 && time.Since(start)+cfg.StepDuration > cfg.Duration {
			run.Note = fmt.Sprintf("sweep stopped by --duration %v before a step broke the limits", cfg.Duration)
			break
		}
		if rate > 10_000_000 {
			run.Note = "sweep stopped at 10M heartbeats/s"
			break
		}
		res, err := runStep(ctx, cfg, pop, p, a, rate, cfg.StepDuration, fmt.Sprintf("%s step %d %.0f/s", label, i+1, rate), stderr)
		res.NotOK = res.notOK(cfg)
		res.Sustainable = res.NotOK == ""
		run.Steps = append(run.Steps, res)
		if err != nil {
			run.Error = err.Error()
			break
		}
		if !res.Sustainable {
			break
		}
		run.Best = i
		rate *= cfg.SweepFactor
	}
	if run.Best >= 0 {
		b := run.Steps[run.Best]
		run.BestRate = b.OfferedRate
		run.Capacity = capacityLine(b)
	}
	return run
}

func capacityLine(b StepResult) string {
	cpu := "unknown"
	if b.CPUPct >= 0 {
		cpu = fmt.Sprintf("%.0f%%", b.CPUPct)
	}
	return fmt.Sprintf("at a 60 s interval this node carries %s users with p99 <= %.3g ms at %s CPU (%s)",
		humanInt(b.OfferedRate*60), b.Latency.P99, cpu, b.CPUScope)
}

func humanInt(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	out := make([]byte, 0, len(s)+len(s)/3)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}
