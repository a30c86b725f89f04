package server

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// ackQueue holds UDP acks under --fsync=always until the write-ahead log has
// synced what they acknowledge; all acks queued before a sync share it.
//
// It keeps no gnet.Conn: a UDP conn is valid only during OnTraffic. It
// keeps the listening socket's descriptor and a copy of the peer's address,
// and sends with sendto(2) itself. The descriptor stays open while gnet
// runs, and udpServer.stop closes the queue (and waits for its loop) before
// it stops gnet, so no ack is ever sent on a closed or reused descriptor.
// At most max acks wait; more, and those queued when the sync fails or
// the queue closes, are dropped and counted (the client resends, as after
// any loss).
type ackQueue struct {
	max  int
	wait func(context.Context) error // the store's WaitDurable
	send func(fd int, to unix.Sockaddr, b []byte) error
	// dropped counts acks not sent, by ackDrop.
	dropped [numAckDrops]*counter
	sent    *counter
	mu      struct {
		sync.Mutex
		pending []pendingAck
		closed  bool
	}
	kick chan struct{}
	stop chan struct{} // closed by close
	done chan struct{} // closed when loop returns
	// ctx ends a wait for durability when the queue closes.
	ctx    context.Context
	cancel context.CancelFunc
}

type ackDrop uint8

const (
	ackQueueFull  ackDrop = iota // max acks were already waiting
	ackNotDurable                // the sync failed or timed out
	ackShutdown                  // the server stopped first
	numAckDrops
)

var ackDropLabels = []string{"queue_full", "not_durable", "shutdown"}

type pendingAck struct {
	fd int
	to unix.Sockaddr
	b  []byte
}

func newAckQueue(max int, wait func(context.Context) error, sent *counter, dropped []*counter) *ackQueue {
	q := &ackQueue{max: max, wait: wait, send: sendTo, sent: sent,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	copy(q.dropped[:], dropped)
	return q
}

func sendTo(fd int, to unix.Sockaddr, b []byte) error { return unix.Sendto(fd, b, 0, to) }

// sockaddr copies a UDP peer address for sendto(2); nil if a is not one.
func sockaddr(a net.Addr) unix.Sockaddr {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return nil
	}
	if ip4 := ua.IP.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: ua.Port}
		copy(sa.Addr[:], ip4)
		return sa
	}
	sa := &unix.SockaddrInet6{Port: ua.Port}
	copy(sa.Addr[:], ua.IP.To16())
	return sa
}

// add queues a copy of reply for c's peer. It does not keep c.
func (q *ackQueue) add(c gnet.Conn, reply []byte) {
	to := sockaddr(c.RemoteAddr())
	if to == nil {
		return
	}
	pa := pendingAck{fd: c.Fd(), to: to, b: append([]byte(nil), reply...)}
	q.mu.Lock()
	switch {
	case q.mu.closed:
		q.mu.Unlock()
		q.drop(ackShutdown, 1)
		return
	case len(q.mu.pending) >= q.max:
		q.mu.Unlock()
		q.drop(ackQueueFull, 1)
		return
	}
	q.mu.pending = append(q.mu.pending, pa)
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *ackQueue) drop(why ackDrop, n int) {
	if c := q.dropped[why]; c != nil && n > 0 {
		c.Add(uint64(n))
	}
}

// pendingLen returns how many acks wait.
func (q *ackQueue) pendingLen() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.mu.pending)
}

// loop sends queued acks once what they acknowledge is durable, until
// close. A close interrupts a wait for durability.
func (q *ackQueue) loop() {
	defer close(q.done)
	ctx := q.ctx
	var batch []pendingAck
	for {
		select {
		case <-q.stop:
			q.mu.Lock()
			n := len(q.mu.pending)
			q.mu.pending = nil
			q.mu.Unlock()
			q.drop(ackShutdown, n)
			return
		case <-q.kick:
		}
		q.mu.Lock()
		batch, q.mu.pending = q.mu.pending, batch[:0]
		q.mu.Unlock()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := q.wait(wctx)
		wcancel()
		for i := range batch {
			switch {
			case err != nil && ctx.Err() != nil:
				q.drop(ackShutdown, 1)
			case err != nil:
				q.drop(ackNotDurable, 1)
			case q.send(batch[i].fd, batch[i].to, batch[i].b) == nil && q.sent != nil:
				q.sent.Inc()
			}
			batch[i] = pendingAck{}
		}
	}
}

// close stops taking acks, drops those waiting, and returns once loop has
// stopped sending (or ctx ends). It is safe to call more than once.
func (q *ackQueue) close(ctx context.Context) error {
	q.mu.Lock()
	first := !q.mu.closed
	q.mu.closed = true
	q.mu.Unlock()
	if first {
		q.cancel()
		close(q.stop)
	}
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cannot stop the UDP ack queue: %w", ctx.Err())
	}
}
