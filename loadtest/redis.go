package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// newRedisGen drives the scaling plan's design: every heartbeat is
// SET user:<id> <room> EX 150 on one Redis, one command per round trip or
// pipelined (a worker sends everything queued, up to --batch, at once).
func newRedisGen(cfg *Config, pop *population, addr string, rate float64, n int64, pipelined bool, shardBase int) *poolGen {
	pop.buildKeys()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, PoolSize: cfg.Conns, MinIdleConns: min(cfg.Conns, 16),
		ReadTimeout: cfg.AckTimeout, WriteTimeout: cfg.AckTimeout,
		DialTimeout: 2 * time.Second, MaxRetries: -1,
		PoolTimeout: cfg.AckTimeout, DisableIdentity: true,
	})
	take := 1
	if pipelined {
		take = cfg.Batch
	}
	g := &poolGen{
		rate: rate, n: n, units: 1, jitter: cfg.Jitter, take: take,
		kMul: 1, timeout: cfg.AckTimeout, closeFn: func() { _ = rdb.Close() },
	}
	for i := range cfg.Conns {
		g.workers = append(g.workers, &redisWorker{rdb: rdb, pop: pop, pipelined: pipelined, shard: shardBase + i, timeout: cfg.AckTimeout})
	}
	return g
}

type redisWorker struct {
	rdb       *redis.Client
	pop       *population
	pipelined bool
	shard     int
	timeout   time.Duration
}

func (w *redisWorker) lose(st *stats, n int64) { st.lost.Add(n) }

func (w *redisWorker) do(st *stats, jobs []job) {
	ctx := context.Background()
	if !w.pipelined {
		for _, j := range jobs {
			u := w.pop.user(j.k)
			err := w.rdb.Set(ctx, w.pop.keys[u], w.pop.rooms[u], defaultRedisEntryTTL).Err()
			w.account(st, j, st.now(), err)
		}
		return
	}
	pipe := w.rdb.Pipeline()
	for _, j := range jobs {
		u := w.pop.user(j.k)
		pipe.Set(ctx, w.pop.keys[u], w.pop.rooms[u], defaultRedisEntryTTL)
	}
	cmds, _ := pipe.Exec(ctx)
	now := st.now()
	for i, j := range jobs {
		var err error
		if i < len(cmds) {
			err = cmds[i].Err()
		}
		w.account(st, j, now, err)
	}
}

func (w *redisWorker) account(st *stats, j job, now int64, err error) {
	var rerr redis.Error
	var nerr net.Error
	switch {
	case err == nil:
	case errors.As(err, &nerr) && nerr.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		st.lost.Add(1)
		return
	case errors.As(err, &rerr):
		st.countErr(errRedis, 1)
	default:
		st.countErr(errConn, 1)
		return
	}
	lat := now - j.at
	if lat > int64(w.timeout) {
		st.lost.Add(1)
		st.late.Add(1)
		return
	}
	st.shard(w.shard).record(lat)
	st.answer.Add(1)
}

// redisServer is a redis-server this run started, on a free loopback port.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis starts redis-server on a free port without persistence
// (--save "" --appendonly no) and waits until it answers PING.
func startRedis() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("cannot start the redis baseline: redis-server is not on PATH (install it or pass --redis-addr): %w", err)
	}
	port, err := freeTCPPort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start redis-server: %w", err)
	}
	rs := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(rs.done) }()
	rdb := redis.NewClient(&redis.Options{Addr: rs.addr, MaxRetries: -1, DisableIdentity: true})
	defer rdb.Close()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err = rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return rs, nil
		}
		select {
		case <-rs.done:
			return nil, fmt.Errorf("cannot start redis-server: it exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			rs.stop()
			return nil, fmt.Errorf("cannot start redis-server on %s: no answer to PING after %v: %w", rs.addr, redisStartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop terminates the server and waits for it (killing it after 5s).
func (rs *redisServer) stop() {
	_ = rs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rs.done:
	case <-time.After(5 * time.Second):
		_ = rs.cmd.Process.Kill()
		<-rs.done
	}
}

func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("cannot find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
