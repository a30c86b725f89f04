package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
)

const testSecret = "k1 0123456789abcdef0123456789abcdef-client-test-secret\n"

// node is one in-process presenced for a test.
type node struct {
	t    *testing.T
	base string // http://host:port
	udp  string // host:port
	keys *token.Keyring
}

// newServer starts a server on free loopback ports, in memory, with the
// per-session min gap off (resends in these tests come faster than 1 s).
func newServer(mod func(*server.Config)) (*server.Server, error) {
	cfg := server.DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.UDPAddr = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.UDPLoops = 1
	cfg.LogLevel = "error"
	cfg.HeartbeatMinGap = 0
	if mod != nil {
		mod(&cfg)
	}
	srv, err := server.New(cfg, server.NewLogger(io.Discard, cfg, nil))
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	return srv, nil
}

func stopServer(srv *server.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// startNode runs a server for t and stops it when t ends.
func startNode(t *testing.T, mod func(*server.Config)) *node {
	t.Helper()
	var secretFile string
	srv, err := newServer(func(c *server.Config) {
		if mod != nil {
			mod(c)
		}
		secretFile = c.SecretFile
	})
	if err != nil {
		t.Fatalf("cannot start server: %v", err)
	}
	t.Cleanup(func() {
		if err := stopServer(srv); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	n := &node{t: t, base: "http://" + srv.HTTPAddr(), udp: srv.UDPAddr()}
	if secretFile != "" {
		if n.keys, err = token.LoadKeyring(secretFile); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// withSecret writes a keyring for t and points the server at it.
func withSecret(t *testing.T) func(*server.Config) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(testSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *server.Config) { c.SecretFile = path }
}

// userStatus is GET /v1/users/{user}.
type userStatus struct {
	Online bool     `json:"online"`
	Rooms  []string `json:"rooms"`
}

func (n *node) user(u string) userStatus {
	n.t.Helper()
	resp, err := http.Get(n.base + "/v1/users/" + url.PathEscape(u))
	if err != nil {
		n.t.Fatalf("GET user %s: %v", u, err)
	}
	defer resp.Body.Close()
	var us userStatus
	if err := json.NewDecoder(resp.Body).Decode(&us); err != nil || resp.StatusCode != 200 {
		n.t.Fatalf("GET user %s: %d %v", u, resp.StatusCode, err)
	}
	return us
}

func (n *node) online(u, room string) bool {
	us := n.user(u)
	for _, r := range us.Rooms {
		if r == room {
			return us.Online
		}
	}
	return false
}

// udpProxy forwards datagrams between one client and a server, dropping the
// first Drop client datagrams, and all of them while Blackhole is set.
type udpProxy struct {
	Drop      atomic.Int64
	Blackhole atomic.Bool
	Received  atomic.Int64 // client datagrams seen
	Forwarded atomic.Int64 // client datagrams passed on

	front *net.UDPConn // clients send here
	back  *net.UDPConn // connected to the server
	mu    sync.Mutex
	peer  *net.UDPAddr // the last client
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, server string) *udpProxy {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	saddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, saddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &udpProxy{front: front, back: back}
	p.wg.Add(2)
	go func() { // client -> server
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.Received.Add(1)
			p.mu.Lock()
			p.peer = from
			p.mu.Unlock()
			if p.Blackhole.Load() || p.Drop.Add(-1) >= 0 {
				continue
			}
			p.Forwarded.Add(1)
			back.Write(buf[:n])
		}
	}()
	go func() { // server -> client
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, err := back.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			p.mu.Lock()
			peer := p.peer
			p.mu.Unlock()
			if peer != nil {
				front.WriteToUDP(buf[:n], peer)
			}
		}
	}()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		p.wg.Wait()
	})
	return p
}

func (p *udpProxy) Addr() string { return p.front.LocalAddr().String() }
