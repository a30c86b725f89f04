package server

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// connLimiter wraps the HTTP listener and refuses a connection over
// --http-max-conns (503) or over --http-max-conns-per-ip from one address
// (429) with a JSON error body, as every other error of the API has (the
// same limits inside fasthttp would answer in plain text). Addresses in
// --trusted-proxies are exempt from the per-address cap: behind them every
// client has their address.
//
// Accept runs on fasthttp's accept goroutine; Close of a connection may run
// on any goroutine. The per-address table holds only addresses with open
// connections, so it is bounded by --http-max-conns.
type connLimiter struct {
	net.Listener
	max, perIP int // 0: no limit
	trusted    *proxySet
	rejected   [2]*counter // by connReject
	mu         struct {
		sync.Mutex
		total int
		byIP  map[netip.Addr]int
	}
}

type connReject uint8

const (
	rejectMaxConns connReject = iota
	rejectPerIP
)

var connRejectLabels = []string{"max_conns", "per_ip"}

func newConnLimiter(ln net.Listener, max, perIP int, trusted *proxySet, rejected []*counter) *connLimiter {
	l := &connLimiter{Listener: ln, max: max, perIP: perIP, trusted: trusted}
	copy(l.rejected[:], rejected)
	l.mu.byIP = make(map[netip.Addr]int)
	return l
}

// Accept returns the next connection within the limits, answering and
// closing those over them.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := addrIP(c.RemoteAddr())
		counted := l.perIP > 0 && !l.trusted.contains(ip)
		l.mu.Lock()
		switch {
		case l.max > 0 && l.mu.total >= l.max:
			l.mu.Unlock()
			l.reject(c, rejectMaxConns, 503, fmt.Sprintf("too many connections (http-max-conns %d)", l.max))
			continue
		case counted && l.mu.byIP[ip] >= l.perIP:
			l.mu.Unlock()
			l.reject(c, rejectPerIP, 429, fmt.Sprintf("too many connections from this address (http-max-conns-per-ip %d)", l.perIP))
			continue
		}
		l.mu.total++
		if counted {
			l.mu.byIP[ip]++
		}
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, ip: ip, counted: counted}, nil
	}
}

// reject writes a minimal HTTP response with a JSON body and closes c. A
// fresh connection's send buffer is empty, so the write does not block;
// the deadline bounds it anyway.
func (l *connLimiter) reject(c net.Conn, reason connReject, status int, msg string) {
	if l.rejected[reason] != nil {
		l.rejected[reason].Inc()
	}
	body := appendJSONString([]byte(`{"error":`), msg)
	body = append(body, '}')
	text := "Service Unavailable"
	if status == 429 {
		text = "Too Many Requests"
	}
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nConnection: close\r\nServer: presenced\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", status, text, len(body), body)
	_ = c.Close()
}

// release gives back a connection's slots: of the total unless it was
// given back already (an upgraded WebSocket), of its address if counted.
func (l *connLimiter) release(ip netip.Addr, total, counted bool) {
	l.mu.Lock()
	if total {
		l.mu.total--
	}
	if counted {
		if n := l.mu.byIP[ip] - 1; n > 0 {
			l.mu.byIP[ip] = n
		} else {
			delete(l.mu.byIP, ip)
		}
	}
	l.mu.Unlock()
}

// limitedConn gives its slots back on the first Close.
type limitedConn struct {
	net.Conn
	l       *connLimiter
	ip      netip.Addr
	counted bool
	state   atomic.Int32 // connOpen, connUpgraded (total slot given back: a WebSocket), connClosed
}

const (
	connOpen int32 = iota
	connUpgraded
	connClosed
)

func (c *limitedConn) Close() error {
	if old := c.state.Swap(connClosed); old != connClosed {
		c.l.release(c.ip, old == connOpen, c.counted)
	}
	return c.Conn.Close()
}

// upgrade gives back the connection's --http-max-conns slot: it is a
// WebSocket now, counted by --max-ws-conns, and HTTP clients (/readyz,
// /metrics, the next upgrade) keep their room. Its per-address slot stays.
func (c *limitedConn) upgrade() {
	if c.state.CompareAndSwap(connOpen, connUpgraded) {
		c.l.release(c.ip, true, false)
	}
}

// addrIP returns the IP of a TCP or UDP address, IPv4-mapped addresses
// unmapped, or the zero Addr.
func addrIP(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}
