package loadtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/presenced/presenced/server/token"
)

// Main runs `presenced loadtest` with args (the flags after "loadtest") and
// returns the exit status: 0 done, 2 bad usage, 1 any other failure (a run
// that could not start, a report that could not be written). A target that
// answers badly is not a failure: the report says how badly.
func Main(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
		return 2
	}
	if cfg.CPU != "" && os.Getenv(pinnedEnv) != cfg.CPU {
		return runPinned(cfg.CPU, args, stdout, stderr)
	}
	if cfg.Serve != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serve(ctx, &cfg, stdout, stderr)
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: cannot create --cpuprofile: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: cannot start --cpuprofile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	var kr *token.Keyring
	if cfg.SecretFile != "" {
		if kr, err = token.LoadKeyring(cfg.SecretFile); err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: --secret-file: %v\n", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, &cfg, kr, args, stdout, stderr)
}

func run(ctx context.Context, cfg *Config, kr *token.Keyring, args []string, stdout, stderr io.Writer) int {
	rep := &Report{
		Started: time.Now(), Args: args, Users: cfg.Users, Rooms: cfg.Rooms, RoomDist: cfg.RoomDist,
		Batch: cfg.Batch, Sockets: cfg.Sockets, Conns: cfg.Conns, Tokens: kr != nil,
		AckTimeoutS: cfg.AckTimeout.Seconds(), TargetP99Ms: float64(cfg.TargetP99) / 1e6, MaxLossPct: cfg.MaxLoss,
	}
	if cfg.FloodRate != 0 {
		rep.FloodRate, rep.FloodKind = cfg.FloodRate, cfg.FloodKind
	}
	pop, err := newPopulation(cfg, kr, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
		return 1
	}
	status := 0
	var redisSrv *redisServer
	defer func() {
		if redisSrv != nil {
			redisSrv.stop()
		}
	}()
	for _, p := range cfg.plans() {
		if ctx.Err() != nil {
			break
		}
		a := addrs{udp: cfg.UDPAddr, http: cfg.HTTPAddr, redis: cfg.RedisAddr}
		var stopTarget func()
		switch p.target {
		case TargetNullUDP:
			a.udp, stopTarget, err = startNullUDP()
		case TargetRawUDP:
			a.udp, stopTarget, err = startRawUDP()
		case TargetNullHTTP:
			a.http, stopTarget, err = startNullHTTP()
		case TargetRedisSetex, TargetRedisPipelined:
			if a.redis == "" {
				if redisSrv == nil {
					redisSrv, err = startRedis()
				}
				if redisSrv != nil {
					a.redis = redisSrv.addr
				}
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: %s: %v\n", p.target, err)
			rep.Runs = append(rep.Runs, Run{Target: p.target, Transport: p.transport, Sweep: cfg.Sweep, Best: -1, Error: err.Error()})
			status = 1
			continue
		}
		r := runTarget(ctx, cfg, pop, p, a, stderr)
		if cfg.CheckOnline && p.target == TargetPresenced && ctx.Err() == nil {
			// At once: a user's last heartbeat is at most an interval old.
			var sent int64
			for _, s := range r.Steps {
				sent = max(sent, s.Sent)
			}
			r.Online = checkOnline(ctx, cfg, pop, sent)
			if r.Online.Error != "" {
				fmt.Fprintf(stderr, "presenced loadtest: --check-online: %s\n", r.Online.Error)
				status = 1
			} else if !cfg.Quiet {
				fmt.Fprintf(stderr, "%s users offline at end: %d of %d reached%s\n", p.target, r.Online.Offline, r.Online.Users, notReachedText(r.Online))
			}
		}
		if stopTarget != nil {
			stopTarget()
		}
		if r.Error != "" {
			fmt.Fprintf(stderr, "presenced loadtest: %s: %s\n", p.target, r.Error)
			status = 1
		}
		rep.Runs = append(rep.Runs, r)
	}
	computeRatios(rep)
	if cfg.CompareFlood {
		computeFloodComparison(rep)
	}
	writeText(stdout, rep)
	if cfg.JSONFile != "" {
		if err := writeFile(cfg.JSONFile, func(w io.Writer) error { return writeJSON(w, rep) }); err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
			status = 1
		}
	}
	if cfg.HTMLFile != "" {
		if err := writeFile(cfg.HTMLFile, func(w io.Writer) error { return writeHTML(w, rep) }); err != nil {
			fmt.Fprintf(stderr, "presenced loadtest: %v\n", err)
			status = 1
		}
	}
	return status
}
