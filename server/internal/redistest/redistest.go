// Package redistest starts throwaway redis-server processes for tests: a
// standalone server, a Redis Cluster (three masters, optionally with
// replicas) or a Sentinel group, on free loopback ports in temporary
// directories, stopped by t.Cleanup; and injects faults (kill -9 and
// restart, SIGSTOP/SIGCONT, a live reshard). A missing redis-server or
// redis-cli fails the test: CI installs them.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/redis/go-redis/v9"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	Port int
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	// paused is set by Pause and cleared by Resume (tests' goroutine only).
	paused bool
}

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required for this test (apt-get install redis-server): %v", name, err)
	}
	return p
}

// Start runs a standalone redis-server without persistence.
func Start(t testing.TB) *Server {
	return start(t, nil)
}

func start(t testing.TB, extra []string) *Server {
	t.Helper()
	lookPath(t, "redis-server")
	// Cluster nodes also listen on port+10000: pick ports with that free too.
	var port int
	for range 50 {
		port = testkit.FreePort(t)
		if port+10000 > 65535 {
			continue
		}
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000)); err == nil {
			l.Close()
			break
		}
	}
	s := &Server{t: t, Port: port, dir: t.TempDir()}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--protected-mode", "no", "--loglevel", "warning"}, extra...)
	s.run()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) run() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("cannot start redis-server: %v", err)
	}
	s.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(s.cmd, s.done)
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not answer: %v", s.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: nothing is saved) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	s.paused = false
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
	s.cmd = nil
}

// Restart starts the stopped server again on the same port, empty.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	_ = os.RemoveAll(filepath.Join(s.dir, "dump.rdb"))
	s.run()
}

// Client is a plain client of this server.
func (s *Server) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr()})
}

// Cluster is a three-master Redis Cluster.
type Cluster struct {
	Nodes []*Server
}

// Addrs lists the masters, comma-separated, as --redis takes them.
func (c *Cluster) Addrs() string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr())
	}
	return strings.Join(a, ",")
}

// StartCluster runs three redis-server --cluster-enabled processes and joins
// them with redis-cli --cluster create (no replicas).
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	var addrs []string
	for range 3 {
		s := start(t, []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"})
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer cc.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := cc.ClusterInfo(ctx).Result()
		cancel()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			// Every master must know the whole layout before clients use it.
			ok := true
			for _, n := range c.Nodes {
				nc := n.Client()
				inf, err := nc.ClusterInfo(context.Background()).Result()
				nc.Close()
				if err != nil || !strings.Contains(inf, "cluster_state:ok") {
					ok = false
				}
			}
			if ok {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis cluster did not become ok: %v %s", err, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CommandStats sums INFO commandstats calls over the given servers, by
// command name (e.g. "evalsha").
func CommandStats(t testing.TB, servers ...*Server) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, s := range servers {
		c := s.Client()
		info, err := c.Info(context.Background(), "commandstats").Result()
		c.Close()
		if err != nil {
			t.Fatalf("INFO commandstats: %v", err)
		}
		sc := bufio.NewScanner(strings.NewReader(info))
		for sc.Scan() {
			line := sc.Text()
			name, rest, ok := strings.Cut(line, ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			f := strings.Split(rest, ",")
			if len(f) == 0 || !strings.HasPrefix(f[0], "calls=") {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimPrefix(f[0], "calls="), 10, 64)
			out[strings.TrimPrefix(name, "cmdstat_")] += n
		}
	}
	return out
}

// ResetStats clears INFO commandstats on the servers.
func ResetStats(t testing.TB, servers ...*Server) {
	t.Helper()
	for _, s := range servers {
		c := s.Client()
		if err := c.ConfigResetStat(context.Background()).Err(); err != nil {
			t.Fatalf("CONFIG RESETSTAT: %v", err)
		}
		c.Close()
	}
}

// Diff is after minus before, for every command.
func Diff(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if v-before[k] != 0 {
			d[k] = v - before[k]
		}
	}
	return d
}

// String renders stats sorted by name.
func String(m map[string]int64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sortStrings(parts)
	return strings.Join(parts, " ")
}

func sortStrings(a []string) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// StartSentinel runs one redis-server --sentinel monitoring master under
// the name "mymaster" (quorum 1).
func StartSentinel(t testing.TB, master *Server) *Server {
	t.Helper()
	lookPath(t, "redis-server")
	s := &Server{t: t, Port: testkit.FreePort(t), dir: t.TempDir()}
	conf := filepath.Join(s.dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 2000\n",
		s.Port, s.dir, master.Port)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	s.args = []string{conf, "--sentinel", "--loglevel", "warning"}
	s.run()
	t.Cleanup(s.Stop)
	return s
}
