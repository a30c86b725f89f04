package server

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/fasthttp"

	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

// fakeConn is the part of gnet.Conn the UDP handler uses: one datagram in,
// replies out.
type fakeConn struct {
	gnet.Conn
	in      []byte
	replies int
	last    []byte
}

var fakeAddr = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4000}

func (c *fakeConn) RemoteAddr() net.Addr { return fakeAddr }

func (c *fakeConn) Next(int) ([]byte, error) { return c.in, nil }
func (c *fakeConn) Write(b []byte) (int, error) {
	c.replies++
	c.last = append(c.last[:0], b...)
	return len(b), nil
}

// newTestServer builds a server that is not listening, with a keyring, for
// driving the handlers directly.
func newTestServer(tb testing.TB) (*Server, *token.Keyring) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("k1 0123456789abcdef0123456789abcdef-bench\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DataDir = ""
	cfg.SecretFile = path
	cfg.SourceRate = 0 // benchmarks drive one source far past any per-source limit
	cfg.HeartbeatMinGap = 0
	s, err := New(cfg, NewLogger(io.Discard, cfg, nil))
	if err != nil {
		tb.Fatal(err)
	}
	s.state.Store(stateReady)
	kr, _ := token.LoadKeyring(path)
	return s, kr
}

func signedDatagram(tb testing.TB, kr *token.Keyring, users int) [][]byte {
	tb.Helper()
	out := make([][]byte, users)
	for i := range out {
		u := "user-" + strconv.Itoa(i)
		tok, err := kr.Mint("", u, "", false, time.Now().Add(time.Hour))
		if err != nil {
			tb.Fatal(err)
		}
		out[i], err = wire.AppendRequest(nil, uint32(i), true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte(u), Room: []byte("room-" + strconv.Itoa(i%100)), Token: []byte(tok)}})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// TestUDPHeartbeatPathAllocs guards the steady-state heartbeat path (decode,
// verify, touch, reply) at zero allocations.
func TestUDPHeartbeatPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race (sync.Pool drops items); .ci/test.sh runs this test without -race")
	}
	s, kr := newTestServer(t)
	u := &udpServer{s: s}
	dgs := signedDatagram(t, kr, 100)
	c := &fakeConn{}
	for _, d := range dgs { // joins: allowed to allocate
		c.in = d
		u.OnTraffic(c)
	}
	if c.replies != len(dgs) {
		t.Fatalf("replies = %d, want %d", c.replies, len(dgs))
	}
	var r wire.Reply
	if err := r.Decode(c.last); err != nil || r.Statuses()[0] != wire.StatusOK {
		t.Fatalf("reply %x: %v", c.last, err)
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		c.in = dgs[i%len(dgs)]
		i++
		u.OnTraffic(c)
	})
	if allocs != 0 {
		t.Fatalf("UDP heartbeat refresh allocates %v times per datagram, want 0", allocs)
	}
}

func httpHeartbeatCtx(body []byte) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/heartbeat")
	ctx.Request.SetBody(body)
	return &ctx
}

// TestHTTPHeartbeatHandlerAllocs guards the HTTP heartbeat handler (parse,
// verify, touch, answer) at zero allocations for a refresh.
func TestHTTPHeartbeatHandlerAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race (sync.Pool drops items); .ci/test.sh runs this test without -race")
	}
	s, kr := newTestServer(t)
	tok, _ := kr.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	ctx := httpHeartbeatCtx([]byte(`{"user":"alice","room":"lobby","token":"` + tok + `"}`))
	s.handleHTTP(ctx)
	if ctx.Response.StatusCode() != 200 {
		t.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	allocs := testing.AllocsPerRun(1000, func() {
		ctx.Response.Reset()
		s.handleHTTP(ctx)
	})
	if allocs != 0 {
		t.Fatalf("HTTP heartbeat refresh allocates %v times, want 0", allocs)
	}
}

func BenchmarkUDPHeartbeat(b *testing.B) {
	s, kr := newTestServer(b)
	u := &udpServer{s: s}
	dgs := signedDatagram(b, kr, 10000)
	c := &fakeConn{}
	for _, d := range dgs {
		c.in = d
		u.OnTraffic(c)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &fakeConn{}
		i := 0
		for pb.Next() {
			c.in = dgs[i%len(dgs)]
			i++
			u.OnTraffic(c)
		}
	})
}

func BenchmarkHTTPHeartbeatHandler(b *testing.B) {
	s, kr := newTestServer(b)
	const users = 10000
	bodies := make([][]byte, users)
	for i := range bodies {
		u := "user-" + strconv.Itoa(i)
		tok, _ := kr.Mint("", u, "", false, time.Now().Add(time.Hour))
		bodies[i] = []byte(`{"user":"` + u + `","room":"room-` + strconv.Itoa(i%100) + `","token":"` + tok + `"}`)
		s.handleHTTP(httpHeartbeatCtx(bodies[i]))
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := httpHeartbeatCtx(nil)
		i := 0
		for pb.Next() {
			ctx.Request.SetBodyRaw(bodies[i%users])
			ctx.Response.Reset()
			i++
			s.handleHTTP(ctx)
		}
	})
}

// FuzzUDPHandler feeds arbitrary datagrams to the UDP handler: it never
// panics, never answers a datagram that did not ask for an ack or that does
// not decode, and never answers with more bytes than it received.
func FuzzUDPHandler(f *testing.F) {
	s, kr := newTestServer(f)
	// A fixed expiry: the fuzz engine runs this setup in the coordinator and
	// again in each worker, and hands the coordinator's seeds to the workers;
	// with time.Now()+1h the two tokens (and the client keys the check below
	// derives) differed whenever a second boundary fell between the setups,
	// which a loaded machine made likely, and the check failed a datagram
	// correctly signed with the coordinator's token.
	tok, _ := kr.Mint("", "alice", "", false, time.Unix(4102444800, 0)) // 2100-01-01
	for _, items := range [][]wire.Item{
		{{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("r"), Token: []byte(tok)}},
		{{Op: wire.OpHeartbeat, User: []byte("alice"), Token: []byte(tok)}, {Op: wire.OpLeave, User: []byte("alice"), Token: []byte(tok)}},
		{{Op: wire.OpHeartbeat, User: []byte("mallory"), Room: []byte("r"), Token: []byte("k1.1.u.x")}},
	} {
		b, _ := wire.AppendRequest(nil, 9, true, items)
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{wire.Magic, wire.Version, wire.FlagAck, 1, 0, 0, 0, 1, 1, 1, 'a', 0, 0})
	// Signed v2 datagrams: the fuzzer mutates them into bad MACs, stale
	// timestamps and replays, none of which may be answered.
	key, _ := kr.ClientKey([]byte(tok))
	for i, items := range [][]wire.Item{
		{{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("r")}},
		{{Op: wire.OpHeartbeat, User: []byte("alice")}, {Op: wire.OpLeave, User: []byte("alice")}},
	} {
		b, _ := wire.AppendRequestV2(nil, 9, true, uint64(time.Now().UnixMilli())+uint64(i), []byte(tok), key[:], items)
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	u := &udpServer{s: s}
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &fakeConn{in: in}
		u.OnTraffic(c)
		if c.replies == 0 {
			return
		}
		var d wire.Datagram
		if err := d.Decode(in); err != nil || !d.Ack {
			t.Fatalf("answered a datagram that is invalid (%v) or did not ask (ack=%v)", err, d.Ack)
		}
		if d.Version == wire.Version2 && !d.VerifyMAC(key[:]) {
			t.Fatalf("answered a v2 datagram with a bad MAC: %x", in)
		}
		if len(c.last) > len(in) {
			t.Fatalf("reply of %d bytes to a %d-byte datagram", len(c.last), len(in))
		}
	})
}

// TestUDPWhileStarting: during log replay a valid, signed datagram is
// answered "unavailable"; an unsigned one still gets no reply.
func TestUDPWhileStarting(t *testing.T) {
	s, kr := newTestServer(t)
	s.state.Store(stateStarting)
	u := &udpServer{s: s}
	tok, _ := kr.Mint("", "alice", "", false, time.Now().Add(time.Hour))
	signed, _ := wire.AppendRequest(nil, 1, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte("alice"), Token: []byte(tok)}})
	unsigned, _ := wire.AppendRequest(nil, 2, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte("alice")}})
	c := &fakeConn{in: unsigned}
	u.OnTraffic(c)
	if c.replies != 0 {
		t.Fatalf("answered an unauthenticated datagram while starting: %x", c.last)
	}
	c.in = signed
	u.OnTraffic(c)
	var r wire.Reply
	if err := r.Decode(c.last); err != nil || c.replies != 1 || r.Statuses()[0] != wire.StatusUnavailable {
		t.Fatalf("signed datagram while starting: %d replies, %x, %v", c.replies, c.last, err)
	}
	if s.m.Stats().Sessions != 0 {
		t.Fatal("a heartbeat was applied while starting")
	}
}
