package loadtest

import (
	"fmt"
	"math"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/presenced/presenced/server/wire"
)

// A ring slot packs a request's seq tag (the seq bits above the ring index,
// 16 of them) and its intended time + 1 (48 bits of ns after the epoch, 3
// days; 0 means empty). Whoever clears a slot owns its request.
const (
	slotTimeBits = 48
	slotTimeMask = 1<<slotTimeBits - 1
	maxRingBits  = 22
	minRingBits  = 10
)

// udpBatch is the most datagrams one sendmmsg(2) or recvmmsg(2) moves.
const udpBatch = 64

// udpGen sends heartbeat datagrams from several connected sockets, one
// sender and one receiver goroutine per socket, and matches acks by seq.
// Both sides move datagrams in batches (sendmmsg/recvmmsg, non-blocking,
// waiting in Go's netpoller): the sender sends every job that is due in
// one system call, the receiver takes whatever acks are queued in one.
type udpGen struct {
	cfg        *Config
	pop        *population
	rate       float64 // datagrams/s for this generator
	n          int64   // datagrams to send
	dur        time.Duration
	kMul, kAdd int64 // global job index = k*kMul + kAdd (mix interleaves)
	shardBase  int
	socks      []*udpSock
}

type udpSock struct {
	conn    *net.UDPConn
	rc      syscall.RawConn
	ring    []atomic.Uint64
	bits    uint
	mask    uint32
	pending atomic.Int64 // requests whose slot is still set

	// Sender only.
	seq    uint32 // next seq
	expire uint32 // oldest seq that may still be pending
	out    *mmsgBuffers
}

// mmsgBuffers are one side's batch: datagram buffers and the headers that
// point at them. Allocated once per socket, on the heap, so the pointers
// handed to the kernel never move.
type mmsgBuffers struct {
	bufs [udpBatch][wire.MaxDatagram + 1]byte
	iovs [udpBatch]unix.Iovec
	hdrs [udpBatch]unix.Mmsghdr
	ats  [udpBatch]int64 // sender: each datagram's intended time
	seqs [udpBatch]uint32
}

func newMmsgBuffers() *mmsgBuffers {
	b := new(mmsgBuffers)
	for i := range udpBatch {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	return b
}

func newUDPGen(cfg *Config, pop *population, addr string, rate float64, n int64, dur time.Duration, kMul, kAdd int64, shardBase int) (*udpGen, error) {
	if err := pop.buildUDP(); err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve UDP address %q: %w", addr, err)
	}
	g := &udpGen{cfg: cfg, pop: pop, rate: rate, n: n, dur: dur, kMul: kMul, kAdd: kAdd, shardBase: shardBase}
	perSock := rate / float64(cfg.Sockets) * cfg.AckTimeout.Seconds()
	if cfg.FlatOut {
		perSock = 2e6 / float64(cfg.Sockets) * cfg.AckTimeout.Seconds()
	}
	ringBits := uint(bits.Len64(uint64(2*perSock + 64)))
	ringBits = max(minRingBits, min(maxRingBits, ringBits))
	for i := range cfg.Sockets {
		var laddr *net.UDPAddr
		if ip := cfg.sourceIP(i); ip != nil {
			laddr = &net.UDPAddr{IP: ip}
		}
		c, err := net.DialUDP("udp", laddr, raddr)
		if err != nil {
			g.close()
			if laddr != nil {
				return nil, fmt.Errorf("cannot open UDP socket from --source-ip %s to %s: %w", laddr.IP, addr, err)
			}
			return nil, fmt.Errorf("cannot open UDP socket to %s: %w", addr, err)
		}
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		rc, err := c.SyscallConn()
		if err != nil {
			_ = c.Close()
			g.close()
			return nil, fmt.Errorf("cannot open UDP socket to %s: %w", addr, err)
		}
		g.socks = append(g.socks, &udpSock{
			conn: c, rc: rc, ring: make([]atomic.Uint64, 1<<ringBits), bits: ringBits,
			mask: 1<<ringBits - 1, out: newMmsgBuffers(),
		})
	}
	return g, nil
}

// close closes the sockets; their receivers return.
func (g *udpGen) close() {
	for _, s := range g.socks {
		_ = s.conn.Close()
	}
}

func (s *udpSock) tag(seq uint32) uint64 { return uint64(seq>>s.bits) & 0xffff }

// run sends the schedule, waits up to --ack-timeout for the last answers,
// counts what is left as lost, and closes the sockets.
func (g *udpGen) run(st *stats, stop *atomic.Bool) {
	n := g.n
	if g.cfg.FlatOut {
		n = math.MaxInt64 / 2 // bounded by the step's duration instead
	}
	pacers := newPacers(len(g.socks), g.rate, n, g.cfg.Jitter)
	timeout := int64(g.cfg.AckTimeout)
	var recv, send sync.WaitGroup
	for i, s := range g.socks {
		if !g.cfg.NoAck {
			recv.Add(1)
			go func() {
				defer recv.Done()
				s.receive(st, st.shard(g.shardBase+i), timeout)
			}()
		}
		send.Add(1)
		go func() {
			defer send.Done()
			g.send(s, &pacers[i], i, st, stop, timeout)
		}()
	}
	send.Wait()
	// Drain: bounded by --ack-timeout after the last send.
	deadline := time.Now().Add(g.cfg.AckTimeout)
	for time.Now().Before(deadline) && !stop.Load() && !g.cfg.NoAck {
		var pending int64
		for _, s := range g.socks {
			pending += s.pending.Load()
		}
		if pending == 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	g.close()
	recv.Wait()
	for _, s := range g.socks {
		s.expireOld(st, 0, 0, true)
	}
}

// send sends socket sockIdx's share of the schedule: at each wake-up every
// job that is due, up to udpBatch, in one sendmmsg. With --flat-out it
// sends full batches without pacing until the step's duration has passed.
func (g *udpGen) send(s *udpSock, p *pacer, sockIdx int, st *stats, stop *atomic.Bool, timeout int64) {
	defer st.markSendEnd()
	nsock := int64(len(g.socks))
	flat, noAck := g.cfg.FlatOut, g.cfg.NoAck
	end := int64(g.dur)
	b := s.out
	var k int64
	next := p.at(0)
	for k < p.n {
		if flat {
			if stop.Load() || st.now() >= end {
				return
			}
		} else if !waitUntil(st.epoch, next, stop) {
			return
		}
		now := st.now()
		m := 0
		for m < udpBatch && k < p.n {
			at := next
			if flat {
				at = now
			} else if at > now {
				break
			}
			gk := (k*nsock+int64(sockIdx))*g.kMul + g.kAdd
			tmpl := g.pop.udp[g.pop.user(gk)]
			seq := s.seq
			s.seq++
			buf := b.bufs[m][:len(tmpl)]
			copy(buf, tmpl)
			buf[4], buf[5], buf[6], buf[7] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
			if noAck {
				buf[2] &^= wire.FlagAck
			}
			b.iovs[m].SetLen(len(tmpl))
			b.ats[m], b.seqs[m] = at, seq
			m++
			k++
			if !flat && k < p.n {
				next = p.at(k)
			}
		}
		if !noAck {
			for i := range m {
				s.track(st, b.seqs[i], b.ats[i])
			}
		}
		st.sent.Add(int64(m))
		sent := s.sendmmsg(b.hdrs[:m])
		if sent < m {
			for i := sent; i < m; i++ {
				if !noAck {
					s.untrack(b.seqs[i], b.ats[i])
				}
			}
			st.countErr(errSend, int64(m-sent))
		}
		if !noAck {
			s.expireOld(st, st.now(), timeout, false)
		}
	}
}

// track puts seq's intended time in its ring slot.
func (s *udpSock) track(st *stats, seq uint32, at int64) {
	if seq-s.expire >= uint32(len(s.ring)) {
		// Ring full: the Swap below counts the oldest as lost.
		s.expire = seq - uint32(len(s.ring)) + 1
	}
	if old := s.ring[seq&s.mask].Swap(s.tag(seq)<<slotTimeBits | uint64(at+1)&slotTimeMask); old != 0 {
		st.lost.Add(1) // overwritten before it was answered or expired
		s.pending.Add(-1)
	}
	s.pending.Add(1)
}

// untrack clears seq's slot after its send failed, unless an answer or
// the expiry cursor got there first.
func (s *udpSock) untrack(seq uint32, at int64) {
	if s.ring[seq&s.mask].CompareAndSwap(s.tag(seq)<<slotTimeBits|uint64(at+1)&slotTimeMask, 0) {
		s.pending.Add(-1)
	}
}

// sendmmsg sends hdrs, waiting in the netpoller while the socket's send
// buffer is full, and returns how many went out; it stops at the first
// error (e.g. ICMP refused, or the socket closed).
func (s *udpSock) sendmmsg(hdrs []unix.Mmsghdr) int {
	sent := 0
	for sent < len(hdrs) {
		var errno syscall.Errno
		var k uintptr
		err := s.rc.Write(func(fd uintptr) bool {
			k, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[sent])), uintptr(len(hdrs)-sent), unix.MSG_DONTWAIT, 0, 0)
			return errno != unix.EAGAIN
		})
		if errno == unix.EINTR {
			continue
		}
		if err != nil || errno != 0 || k == 0 {
			break
		}
		sent += int(k)
	}
	return sent
}

// expireOld advances the sender's expiry cursor over answered requests and
// counts requests older than timeout as lost; with all, every pending
// request is lost (end of step).
func (s *udpSock) expireOld(st *stats, now, timeout int64, all bool) {
	for s.expire != s.seq {
		slot := &s.ring[s.expire&s.mask]
		v := slot.Load()
		if v != 0 && v>>slotTimeBits == s.tag(s.expire) {
			at := int64(v&slotTimeMask) - 1
			if !all && now-at <= timeout {
				return
			}
			if slot.CompareAndSwap(v, 0) {
				st.lost.Add(1)
				s.pending.Add(-1)
			}
		}
		s.expire++
	}
}

// receive reads acks in batches until the socket is closed.
func (s *udpSock) receive(st *stats, sh *shard, timeout int64) {
	b := newMmsgBuffers()
	var rep wire.Reply
	for {
		for i := range udpBatch {
			b.hdrs[i].Len = 0
		}
		var n uintptr
		var errno syscall.Errno
		err := s.rc.Read(func(fd uintptr) bool {
			n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), udpBatch, unix.MSG_DONTWAIT, 0, 0)
			return errno != unix.EAGAIN
		})
		switch {
		case err != nil:
			return // closed
		case errno == unix.EINTR:
			continue
		case errno != 0:
			st.countErr(errConn, 1) // e.g. ICMP port unreachable
			continue
		}
		now := st.now()
		var answered, done int64
		for i := range int(n) {
			if rep.Decode(b.bufs[i][:b.hdrs[i].Len]) != nil || len(rep.Statuses()) != 1 {
				st.countErr(errBadReply, 1)
				continue
			}
			slot := &s.ring[rep.Seq&s.mask]
			v := slot.Load()
			if v == 0 || v>>slotTimeBits != s.tag(rep.Seq) || !slot.CompareAndSwap(v, 0) {
				st.late.Add(1)
				continue
			}
			done++
			lat := now - (int64(v&slotTimeMask) - 1)
			if lat > timeout {
				st.lost.Add(1)
				st.late.Add(1)
				continue
			}
			sh.record(lat)
			answered++
			if c := rep.Statuses()[0]; c != wire.StatusOK {
				st.countErr(statusKind(uint8(c)), 1)
			}
		}
		s.pending.Add(-done)
		st.answer.Add(answered)
	}
}
