package loadtest

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/logging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/presenced/presenced/server/wire"
)

// nullReply turns the request in b into its reply, in place, and returns
// the reply's length; 0 means no reply (not a request asking for one). The
// reply has the size presenced sends: statuses all ok, timing if it fits.
// Only the header is checked: this is a do-nothing target.
func nullReply(b []byte) int {
	if len(b) < wire.HeaderLen || b[0] != wire.Magic || b[1] != wire.Version || b[2]&wire.FlagAck == 0 {
		return 0
	}
	count := int(b[3])
	if count == 0 || count > wire.MaxItems {
		return 0
	}
	size := len(b)
	b[2] = wire.FlagReply
	for i := range count {
		b[wire.HeaderLen+i] = byte(wire.StatusOK)
	}
	n := wire.HeaderLen + count
	if n+wire.TimingLen <= size {
		b[2] |= wire.FlagTiming
		putU32(b[n:], nullReplyIntervalMs)
		putU32(b[n+4:], nullReplyTTLMs)
		n += wire.TimingLen
	}
	return n
}

func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

// nullUDP is a do-nothing gnet UDP receiver: multicore, SO_REUSEPORT, one
// event loop per CPU, replying to each datagram with a valid-sized ack.
type nullUDP struct {
	gnet.BuiltinEventEngine
	eng  chan gnet.Engine
	done chan error
	nullCounters
}

// nullCounters are a do-nothing UDP target's counts, for --serve's /metrics.
type nullCounters struct {
	in  atomic.Int64 // datagrams received
	out atomic.Int64 // replies sent
}

func (s *nullUDP) OnBoot(e gnet.Engine) gnet.Action {
	s.eng <- e
	return gnet.None
}

func (s *nullUDP) OnTraffic(c gnet.Conn) gnet.Action {
	b, _ := c.Next(-1)
	s.in.Add(1)
	if n := nullReply(b); n > 0 {
		if _, err := c.Write(b[:n]); err == nil {
			s.out.Add(1)
		}
	}
	return gnet.None
}

// startNullUDP starts the receiver on a free loopback port; stop ends it.
func startNullUDP() (addr string, stop func(), err error) {
	port, err := freeUDPPort()
	if err != nil {
		return "", nil, err
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	_, stop, err = startNullUDPAt(addr)
	return addr, stop, err
}

// startNullUDPAt starts the receiver on addr.
func startNullUDPAt(addr string) (s *nullUDP, stop func(), err error) {
	s = &nullUDP{eng: make(chan gnet.Engine, 1), done: make(chan error, 1)}
	go func() {
		s.done <- gnet.Run(s, "udp://"+addr, gnet.WithMulticore(true), gnet.WithReusePort(true),
			gnet.WithNumEventLoop(runtime.GOMAXPROCS(0)), gnet.WithSocketRecvBuffer(4<<20), gnet.WithLogger(quietLogger{}), gnet.WithLogLevel(logging.ErrorLevel))
	}()
	select {
	case eng := <-s.eng:
		return s, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = eng.Stop(ctx)
			select {
			case <-s.done:
			case <-ctx.Done():
			}
		}, nil
	case err := <-s.done:
		return nil, nil, fmt.Errorf("cannot start null-udp on %s: %w", addr, err)
	case <-time.After(5 * time.Second):
		return nil, nil, fmt.Errorf("cannot start null-udp on %s: no boot after 5s", addr)
	}
}

// quietLogger drops gnet's logs: a baseline has nothing to tell.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("cannot find a free UDP port: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

var (
	nullHeartbeatBody  = []byte(`{"interval_ms":60000,"ttl_ms":150000}`)
	nullHeartbeatsBody = []byte(`{"accepted":0,"rejected":[]}`)
)

// startNullHTTP starts a do-nothing fasthttp server on a free loopback
// port answering /v1/heartbeat and /v1/heartbeats as presenced does.
func startNullHTTP() (addr string, stop func(), err error) {
	return startNullHTTPAt("127.0.0.1:0", nil)
}

// startNullHTTPAt starts the do-nothing HTTP server on addr. With udp (a
// do-nothing UDP target served beside it), GET /metrics answers that
// target's counters under presenced's metric names; otherwise the
// requests this server answered (nullMetrics).
func startNullHTTPAt(addr string, udp *nullCounters) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("cannot start null-http: %w", err)
	}
	var requests atomic.Int64
	metrics := nullMetrics(udp, &requests)
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("application/json")
			switch string(ctx.Path()) {
			case "/v1/heartbeat":
				requests.Add(1)
				ctx.SetBody(nullHeartbeatBody)
			case "/v1/heartbeats":
				requests.Add(1)
				ctx.SetBody(nullHeartbeatsBody)
			case "/metrics":
				metrics(ctx)
			default:
				ctx.SetStatusCode(fasthttp.StatusNotFound)
				ctx.SetBodyString(`{"error":"not found"}`)
			}
		},
		NoDefaultServerHeader: true,
		NoDefaultDate:         true,
		ReadTimeout:           time.Minute,
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
		_ = ln.Close()
		<-done
	}, nil
}

// nullMetrics is GET /metrics of a do-nothing target, served by
// client_golang as presenced's is: with udp, that target's counts under
// presenced's names (each datagram counts as a heartbeat); otherwise the
// heartbeat requests the null HTTP server answered.
func nullMetrics(udp *nullCounters, requests *atomic.Int64) fasthttp.RequestHandler {
	reg := prometheus.NewRegistry()
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	if udp != nil {
		reg.MustRegister(
			counter(metricDatagrams, "UDP datagrams received.", &udp.in),
			counter(metricReplies, "UDP acknowledgements sent.", &udp.out),
			counter(metricHeartbeats, "Heartbeats received (here: UDP datagrams received).", &udp.in),
		)
	} else {
		reg.MustRegister(counter("presenced_http_requests_total", "Heartbeat requests answered.", requests))
	}
	return fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}
