package loadtest

import (
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presenced/presenced/server/wire"
)

// flooder is the abuse scenario's one bad source: --flood-sockets UDP
// sockets bound to --flood-source, each with one sender goroutine (paced at
// its share of --flood-rate, or as fast as it can) and one receiver that
// counts replies. It has its own counters: nothing it sends or receives
// touches the step's stats, so the users' latency and loss exclude it.
type flooder struct {
	rate   float64 // datagrams/s in total; -1: as fast as it can
	dur    time.Duration
	kind   string
	source string
	dgrams [][]byte
	socks  []*net.UDPConn

	sent     atomic.Int64
	sendErrs atomic.Int64
	replies  atomic.Int64
	bad      atomic.Int64                      // replies that do not decode
	statuses [len(statusNamesAll)]atomic.Int64 // replies by their first status
	sendEnd  atomic.Int64                      // ns after the epoch the last sender stopped
}

// statusNamesAll are the UDP reply statuses the flood report counts, the
// last one standing for codes it does not know.
var statusNamesAll = [...]string{"ok", "bad_id", "bad_token", "token_expired", "unknown_key",
	"wrong_room", "rate_limited", "too_many_rooms", "unavailable", "unknown"}

func newFlooder(cfg *Config, pop *population, addr string, dur time.Duration) (*flooder, error) {
	if len(pop.flood) == 0 {
		return nil, errors.New("no flood datagrams built")
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("flood: cannot resolve UDP address %q: %w", addr, err)
	}
	f := &flooder{rate: cfg.FloodRate, dur: dur, kind: cfg.FloodKind, source: cfg.FloodSource, dgrams: pop.flood}
	laddr := &net.UDPAddr{IP: net.ParseIP(cfg.FloodSource)}
	for range cfg.FloodSockets {
		c, err := net.DialUDP("udp", laddr, raddr)
		if err != nil {
			f.close()
			return nil, fmt.Errorf("flood: cannot open a UDP socket from --flood-source %s to %s: %w", cfg.FloodSource, addr, err)
		}
		_ = c.SetWriteBuffer(4 << 20)
		_ = c.SetReadBuffer(1 << 20)
		f.socks = append(f.socks, c)
	}
	return f, nil
}

func (f *flooder) close() {
	for _, c := range f.socks {
		_ = c.Close()
	}
}

// run floods from the step's epoch until dur has passed or stop is set,
// gives late replies 100 ms, and closes the sockets.
func (f *flooder) run(epoch time.Time, stop *atomic.Bool) {
	var recv, send sync.WaitGroup
	var pacers []pacer
	if f.rate > 0 {
		pacers = newPacers(len(f.socks), f.rate, int64(math.Round(f.rate*f.dur.Seconds())), 0)
	}
	for i, c := range f.socks {
		recv.Add(1)
		go func() {
			defer recv.Done()
			f.receive(c)
		}()
		send.Add(1)
		go func() {
			defer send.Done()
			defer f.markEnd(epoch)
			if pacers != nil {
				f.sendPaced(c, &pacers[i], i, epoch, stop)
			} else {
				f.sendFlat(c, i, epoch, stop)
			}
		}()
	}
	send.Wait()
	time.Sleep(100 * time.Millisecond)
	f.close()
	recv.Wait()
}

func (f *flooder) markEnd(epoch time.Time) {
	now := int64(time.Since(epoch))
	for {
		old := f.sendEnd.Load()
		if now <= old || f.sendEnd.CompareAndSwap(old, now) {
			return
		}
	}
}

// write sends datagram k of socket i (valid: built in scratch, which the
// socket's sender owns); it reports false once the socket is closed.
func (f *flooder) write(c *net.UDPConn, scratch []byte, k uint64, i int) bool {
	var b []byte
	if f.kind == "valid" {
		b = append(scratch[:0], f.dgrams[0]...)
		seq := uint32(k)<<6 | uint32(i)&63 // distinct seqs across sockets
		b[4], b[5], b[6], b[7] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
	} else {
		b = f.dgrams[(k*uint64(len(f.socks))+uint64(i))%uint64(len(f.dgrams))] // read-only
	}
	f.sent.Add(1)
	if _, err := c.Write(b); err != nil {
		f.sendErrs.Add(1) // e.g. ECONNREFUSED after an ICMP port unreachable
		if errors.Is(err, net.ErrClosed) {
			return false
		}
	}
	return true
}

// sendFlat sends as fast as one goroutine can, checking the clock every
// 64 datagrams.
func (f *flooder) sendFlat(c *net.UDPConn, i int, epoch time.Time, stop *atomic.Bool) {
	scratch := make([]byte, 0, wire.MaxDatagram)
	for k := uint64(0); ; k++ {
		if k&63 == 0 && (stop.Load() || time.Since(epoch) >= f.dur) {
			return
		}
		if !f.write(c, scratch, k, i) {
			return
		}
	}
}

// sendPaced sends this socket's share of --flood-rate on the open-loop
// schedule (late: at once, never skipping).
func (f *flooder) sendPaced(c *net.UDPConn, p *pacer, i int, epoch time.Time, stop *atomic.Bool) {
	scratch := make([]byte, 0, wire.MaxDatagram)
	for k := range p.n {
		if !waitUntil(epoch, p.at(k), stop) || !f.write(c, scratch, uint64(k), i) {
			return
		}
	}
}

// receive counts replies until the socket is closed.
func (f *flooder) receive(c *net.UDPConn) {
	buf := make([]byte, wire.MaxDatagram+1)
	var rep wire.Reply
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP errors: counted by the sender
		}
		f.replies.Add(1)
		if rep.Decode(buf[:n]) != nil || len(rep.Statuses()) == 0 {
			f.bad.Add(1)
			continue
		}
		s := int(rep.Statuses()[0])
		if s >= len(f.statuses) {
			s = len(f.statuses) - 1
		}
		f.statuses[s].Add(1)
	}
}

// FloodResult is what the flooder did during one step. The users' figures
// of the step do not include it.
type FloodResult struct {
	Kind          string           `json:"kind"`   // valid or garbage
	Source        string           `json:"source"` // --flood-source
	Sockets       int              `json:"sockets"`
	OfferedRate   float64          `json:"offered_rate"` // datagrams/s; -1: as fast as it can
	SpanS         float64          `json:"span_s"`       // how long it sent
	Sent          int64            `json:"sent"`
	SentPerS      float64          `json:"sent_per_s"`
	SendErrors    int64            `json:"send_errors"`
	Replies       int64            `json:"replies"`
	RepliesPerS   float64          `json:"replies_per_s"`
	ReplyPct      float64          `json:"reply_pct"`      // replies / sent
	ReplyStatuses map[string]int64 `json:"reply_statuses"` // by the reply's status
	BadReplies    int64            `json:"bad_replies"`
}

func (f *flooder) result(sockets int) *FloodResult {
	r := &FloodResult{
		Kind: f.kind, Source: f.source, Sockets: sockets, OfferedRate: f.rate,
		Sent: f.sent.Load(), SendErrors: f.sendErrs.Load(), Replies: f.replies.Load(), BadReplies: f.bad.Load(),
		ReplyStatuses: map[string]int64{},
	}
	r.SpanS = time.Duration(f.sendEnd.Load()).Seconds()
	if r.SpanS > 0 {
		r.SentPerS = float64(r.Sent) / r.SpanS
		r.RepliesPerS = float64(r.Replies) / r.SpanS
	}
	if r.Sent > 0 {
		r.ReplyPct = 100 * float64(r.Replies) / float64(r.Sent)
	}
	for i := range f.statuses {
		if v := f.statuses[i].Load(); v > 0 {
			r.ReplyStatuses[statusNamesAll[i]] = v
		}
	}
	return r
}

func floodRateText(r float64) string {
	if r < 0 {
		return "as fast as it can"
	}
	return fmt.Sprintf("%.0f/s", r)
}
