package loadtest

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

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

// udpGen sends heartbeat datagrams from several connected sockets, one
// sender and one receiver goroutine per socket, and matches acks by seq.
type udpGen struct {
	cfg        *Config
	pop        *population
	rate       float64 // datagrams/s for this generator
	n          int64   // datagrams to send
	kMul, kAdd int64   // global job index = k*kMul + kAdd (mix interleaves)
	shardBase  int
	socks      []*udpSock
}

type udpSock struct {
	conn    *net.UDPConn
	ring    []atomic.Uint64
	bits    uint
	mask    uint32
	pending atomic.Int64 // requests whose slot is still set

	// Sender only.
	seq    uint32 // next seq
	expire uint32 // oldest seq that may still be pending
	buf    []byte
}

func newUDPGen(cfg *Config, pop *population, addr string, rate float64, n int64, kMul, kAdd int64, shardBase int) (*udpGen, error) {
	if err := pop.buildUDP(); err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve UDP address %q: %w", addr, err)
	}
	g := &udpGen{cfg: cfg, pop: pop, rate: rate, n: n, kMul: kMul, kAdd: kAdd, shardBase: shardBase}
	perSock := rate / float64(cfg.Sockets) * cfg.AckTimeout.Seconds()
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
		g.socks = append(g.socks, &udpSock{
			conn: c, ring: make([]atomic.Uint64, 1<<ringBits), bits: ringBits,
			mask: 1<<ringBits - 1, buf: make([]byte, 0, wire.MaxDatagram),
		})
	}
	return g, nil
}

func (g *udpGen) close() {
	for _, s := range g.socks {
		_ = s.conn.Close()
	}
}

func (s *udpSock) tag(seq uint32) uint64 { return uint64(seq>>s.bits) & 0xffff }

// run sends the schedule, waits up to --ack-timeout for the last answers,
// counts what is left as lost, and closes the sockets.
func (g *udpGen) run(st *stats, stop *atomic.Bool) {
	pacers := newPacers(len(g.socks), g.rate, g.n, g.cfg.Jitter)
	timeout := int64(g.cfg.AckTimeout)
	var recv, send sync.WaitGroup
	for i, s := range g.socks {
		recv.Add(1)
		go func() {
			defer recv.Done()
			s.receive(st, st.shard(g.shardBase+i), timeout)
		}()
		send.Add(1)
		go func() {
			defer send.Done()
			g.send(s, &pacers[i], i, st, stop, timeout)
		}()
	}
	send.Wait()
	// Drain: bounded by --ack-timeout after the last send.
	deadline := time.Now().Add(g.cfg.AckTimeout)
	for time.Now().Before(deadline) && !stop.Load() {
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

func (g *udpGen) send(s *udpSock, p *pacer, sockIdx int, st *stats, stop *atomic.Bool, timeout int64) {
	defer st.markSendEnd()
	nsock := int64(len(g.socks))
	for k := range p.n {
		at := p.at(k)
		if !waitUntil(st.epoch, at, stop) {
			return
		}
		gk := (k*nsock+int64(sockIdx))*g.kMul + g.kAdd
		tmpl := g.pop.udp[g.pop.user(gk)]
		seq := s.seq
		s.seq++
		if seq-s.expire >= uint32(len(s.ring)) {
			// Ring full: the Swap below counts the oldest as lost.
			s.expire = seq - uint32(len(s.ring)) + 1
		}
		slot := &s.ring[seq&s.mask]
		if old := slot.Swap(s.tag(seq)<<slotTimeBits | uint64(at+1)&slotTimeMask); old != 0 {
			st.lost.Add(1) // overwritten before it was answered or expired
			s.pending.Add(-1)
		}
		s.pending.Add(1)
		b := append(s.buf[:0], tmpl...)
		b[4], b[5], b[6], b[7] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
		st.sent.Add(1)
		if _, err := s.conn.Write(b); err != nil {
			if slot.CompareAndSwap(s.tag(seq)<<slotTimeBits|uint64(at+1)&slotTimeMask, 0) {
				s.pending.Add(-1)
			}
			st.countErr(errSend, 1)
			if errors.Is(err, net.ErrClosed) {
				return
			}
		}
		s.expireOld(st, st.now(), timeout, false)
	}
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

// receive reads acks until the socket is closed.
func (s *udpSock) receive(st *stats, sh *shard, timeout int64) {
	buf := make([]byte, wire.MaxDatagram+1)
	var rep wire.Reply
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			st.countErr(errConn, 1) // e.g. ICMP port unreachable
			continue
		}
		now := st.now()
		if rep.Decode(buf[:n]) != nil || len(rep.Statuses()) != 1 {
			st.countErr(errBadReply, 1)
			continue
		}
		slot := &s.ring[rep.Seq&s.mask]
		v := slot.Load()
		if v == 0 || v>>slotTimeBits != s.tag(rep.Seq) || !slot.CompareAndSwap(v, 0) {
			st.late.Add(1)
			continue
		}
		s.pending.Add(-1)
		lat := now - (int64(v&slotTimeMask) - 1)
		if lat > timeout {
			st.lost.Add(1)
			st.late.Add(1)
			continue
		}
		sh.record(lat)
		st.answer.Add(1)
		if c := rep.Statuses()[0]; c != wire.StatusOK {
			st.countErr(statusKind(uint8(c)), 1)
		}
	}
}
