package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presenced/presenced/internal/testkit"
	"github.com/redis/go-redis/v9"
)

// Faults and topologies for failover tests: a Redis Cluster with replicas,
// a Sentinel group, and ways to crash, hang and reshard them.

// Kill crashes the server (SIGKILL) and waits for it; StartAgain brings it
// back.
func (s *Server) Kill() { s.Stop() }

// StartAgain restarts a killed server on the same port and directory,
// without data (no persistence) but with its cluster config: a Redis
// Cluster node rejoins, as a replica of the node that took its slots.
func (s *Server) StartAgain() {
	s.t.Helper()
	s.run()
}

// Pause stops the process (SIGSTOP): it keeps its sockets but answers
// nothing, as a hung master would. Resume continues it (SIGCONT).
func (s *Server) Pause() {
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGSTOP)
		s.paused = true
	}
}

// Resume continues a paused server.
func (s *Server) Resume() {
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
		s.paused = false
	}
}

// Alive reports whether the process runs (it may be paused).
func (s *Server) Alive() bool { return s.cmd != nil }

// Answering reports whether the process runs and is not paused.
func (s *Server) Answering() bool { return s.cmd != nil && !s.paused }

// Role is "master" or "slave" from INFO replication ("" when it does not answer).
func (s *Server) Role() string {
	c := s.Client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "role:"); ok {
			return v
		}
	}
	return ""
}

// StartClusterReplicas runs a Redis Cluster of masters masters with
// replicas replicas each (cluster-node-timeout 2000). Nodes lists them all.
func StartClusterReplicas(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	var addrs []string
	for range masters * (1 + replicas) {
		s := start(t, []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
			"--cluster-replica-validity-factor", "0", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"})
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK(t, 30*time.Second)
	if replicas > 0 {
		// Every replica in sync before faults are injected.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok := 0
			for _, s := range c.Nodes {
				if s.Role() == "slave" && s.linkUp() {
					ok++
				}
			}
			if ok == masters*replicas {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d replicas in sync after 30s", ok, masters*replicas)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

func (s *Server) linkUp() bool {
	c := s.Client()
	defer c.Close()
	info, err := c.Info(context.Background(), "replication").Result()
	return err == nil && strings.Contains(info, "master_link_status:up")
}

// clusterNodes parses CLUSTER NODES as seen by s: address -> flags, and
// whether the node serves slots.
func clusterNodes(s *Server) (map[string]string, map[string]bool, error) {
	c := s.Client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	out, err := c.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, nil, err
	}
	flags, slots := map[string]string{}, map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		flags[addr] = f[2]
		slots[addr] = len(f) > 8
	}
	return flags, slots, nil
}

// WaitOK waits until every running, unpaused node reports cluster_state:ok
// and sees each slot-serving master as healthy, and returns when that
// first held (the engine is healthy again).
func (c *Cluster) WaitOK(t testing.TB, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	byAddr := map[string]*Server{}
	for _, s := range c.Nodes {
		byAddr[s.Addr()] = s
	}
	var why string
	for {
		ok := true
		for _, s := range c.Nodes {
			if !s.Alive() || s.paused {
				continue
			}
			nc := s.Client()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err := nc.ClusterInfo(ctx).Result()
			cancel()
			nc.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok, why = false, fmt.Sprintf("%s: %v %q", s.Addr(), err, info)
				break
			}
			flags, slots, err := clusterNodes(s)
			if err != nil {
				ok, why = false, err.Error()
				break
			}
			for a, f := range flags {
				if !slots[a] {
					continue
				}
				if srv := byAddr[a]; strings.Contains(f, "fail") || !strings.Contains(f, "master") || srv == nil || !srv.Alive() || srv.paused {
					ok, why = false, fmt.Sprintf("%s sees %s %s serving slots", s.Addr(), a, f)
				}
			}
			if !ok {
				break
			}
		}
		if ok {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis cluster not ok after %s: %s", d, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Masters lists the running nodes that serve slots, as a running node sees them.
func (c *Cluster) Masters(t testing.TB) []*Server {
	t.Helper()
	for _, s := range c.Nodes {
		if !s.Alive() || s.paused {
			continue
		}
		flags, slots, err := clusterNodes(s)
		if err != nil {
			continue
		}
		var out []*Server
		for _, n := range c.Nodes {
			if slots[n.Addr()] && strings.Contains(flags[n.Addr()], "master") && n.Alive() {
				out = append(out, n)
			}
		}
		return out
	}
	t.Fatal("no cluster node answers CLUSTER NODES")
	return nil
}

// MasterAddrs is Masters as --redis takes them.
func (c *Cluster) MasterAddrs(t testing.TB) string {
	var a []string
	for _, s := range c.Masters(t) {
		a = append(a, s.Addr())
	}
	return strings.Join(a, ",")
}

// ID is the node's cluster id.
func (s *Server) ID(t testing.TB) string {
	t.Helper()
	c := s.Client()
	defer c.Close()
	id, err := c.Do(context.Background(), "cluster", "myid").Text()
	if err != nil {
		t.Fatalf("CLUSTER MYID: %v", err)
	}
	return id
}

// Reshard moves slots slots from one master to another with redis-cli
// --cluster reshard (keys are migrated while clients keep writing).
func (c *Cluster) Reshard(t testing.TB, from, to *Server, slots int) {
	t.Helper()
	cli := lookPath(t, "redis-cli")
	out, err := exec.Command(cli, "--cluster", "reshard", from.Addr(),
		"--cluster-from", from.ID(t), "--cluster-to", to.ID(t),
		"--cluster-slots", strconv.Itoa(slots), "--cluster-yes", "--cluster-pipeline", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster reshard: %v\n%s", err, out)
	}
}

// SentinelGroup is a master, its replicas and the sentinels watching it
// (as "mymaster", quorum 2).
type SentinelGroup struct {
	Master    *Server
	Replicas  []*Server
	Sentinels []*Server
}

// Addrs lists the sentinels, comma-separated, as --redis takes them.
func (g *SentinelGroup) Addrs() string {
	var a []string
	for _, s := range g.Sentinels {
		a = append(a, s.Addr())
	}
	return strings.Join(a, ",")
}

// StartSentinelGroup runs one master, two replicas and three sentinels
// (down-after 1000 ms), and waits until every sentinel knows both replicas
// and the other sentinels, so a failover can be authorized.
func StartSentinelGroup(t testing.TB) *SentinelGroup {
	t.Helper()
	g := &SentinelGroup{Master: start(t, []string{"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"})}
	for range 2 {
		g.Replicas = append(g.Replicas, start(t, []string{"--replicaof", "127.0.0.1", strconv.Itoa(g.Master.Port)}))
	}
	waitFor(t, 20*time.Second, "replicas in sync", func() bool {
		return g.Replicas[0].linkUp() && g.Replicas[1].linkUp()
	})
	for range 3 {
		s := &Server{t: t, Port: testkit.FreePort(t), dir: t.TempDir()}
		conf := filepath.Join(s.dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
			"sentinel monitor mymaster 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds mymaster 1000\n"+
			"sentinel failover-timeout mymaster 5000\n"+
			"sentinel parallel-syncs mymaster 2\n",
			s.Port, s.dir, g.Master.Port)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		s.args = []string{conf, "--sentinel", "--loglevel", "warning"}
		s.run()
		t.Cleanup(s.Stop)
		g.Sentinels = append(g.Sentinels, s)
	}
	waitFor(t, 30*time.Second, "sentinels to know each other and the replicas", func() bool {
		for _, s := range g.Sentinels {
			c := s.Client()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ss, err1 := c.Do(ctx, "sentinel", "sentinels", "mymaster").Slice()
			rs, err2 := c.Do(ctx, "sentinel", "replicas", "mymaster").Slice()
			cancel()
			c.Close()
			if err1 != nil || err2 != nil || len(ss) != 2 || len(rs) != 2 {
				return false
			}
		}
		return true
	})
	return g
}

// CurrentMaster is the server the sentinels name as master (nil if none
// of the group's servers).
func (g *SentinelGroup) CurrentMaster(t testing.TB) *Server {
	t.Helper()
	for _, s := range g.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a, err := c.GetMasterAddrByName(ctx, "mymaster").Result()
		cancel()
		c.Close()
		if err != nil || len(a) != 2 {
			continue
		}
		for _, srv := range append([]*Server{g.Master}, g.Replicas...) {
			if strconv.Itoa(srv.Port) == a[1] {
				return srv
			}
		}
	}
	return nil
}

// WaitPromoted waits until the sentinels name another master than old and
// that server says it is a master; it returns when that first held.
func (g *SentinelGroup) WaitPromoted(t testing.TB, old *Server, d time.Duration) (*Server, time.Time) {
	t.Helper()
	var m *Server
	waitFor(t, d, "a sentinel promotion", func() bool {
		m = g.CurrentMaster(t)
		return m != nil && m != old && m.Role() == "master"
	})
	return m, time.Now()
}

func waitFor(t testing.TB, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ReplicasInSync counts running, unpaused replicas whose link to their
// master is up.
func (c *Cluster) ReplicasInSync() int {
	n := 0
	for _, s := range c.Nodes {
		if s.Alive() && !s.paused && s.Role() == "slave" && s.linkUp() {
			n++
		}
	}
	return n
}
