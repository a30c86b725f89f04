package client_test

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/server"
)

const testSecret = "k1 0123456789abcdef0123456789abcdef-client-test-secret\n"

// node is one in-process presenced for a test (the server's black-box harness).
type node = servertest.Node

// startNode runs a server for t on free loopback ports, in memory, and
// stops it when t ends.
func startNode(t *testing.T, mod func(*server.Config)) *node { return servertest.Start(t, mod) }

// withSecret writes a keyring for t and points the server at it.
func withSecret(t *testing.T) func(*server.Config) { return servertest.WithSecret(t, testSecret) }

// onlineIn reports whether u has a session in room on n.
func onlineIn(n *node, u, room string) bool {
	us := n.User(u)
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
