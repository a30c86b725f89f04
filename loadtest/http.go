package loadtest

import (
	"bytes"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// newHTTPGen drives POST /v1/heartbeat (batch 1) or POST /v1/heartbeats
// (batch > 1) at rate heartbeats/s over up to --conns connections.
func newHTTPGen(cfg *Config, pop *population, addr string, rate float64, n int64, batch int, kMul, kAdd int64, shardBase int) *poolGen {
	pop.buildJSON()
	hc := &fasthttp.HostClient{
		Addr:                addr,
		MaxConns:            cfg.Conns,
		MaxIdleConnDuration: time.Minute,
		ReadTimeout:         cfg.AckTimeout + time.Second,
		WriteTimeout:        cfg.AckTimeout + time.Second,
		MaxConnWaitTimeout:  cfg.AckTimeout,
	}
	if len(cfg.sourceIPs) > 0 {
		// --source-ip: connection i binds the i-th address, round robin.
		var next atomic.Uint64
		hc.DialTimeout = func(addr string, timeout time.Duration) (net.Conn, error) {
			i := int(next.Add(1) - 1)
			d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: cfg.sourceIP(i)}}
			return d.Dial("tcp", addr)
		}
	}
	path := "/v1/heartbeat"
	if batch > 1 {
		path = "/v1/heartbeats"
	}
	jobs := int64(float64(n) / float64(batch))
	g := &poolGen{
		rate: rate / float64(batch), n: jobs, units: int64(batch), jitter: cfg.Jitter,
		take: 1, kMul: kMul, kAdd: kAdd, timeout: cfg.AckTimeout,
		closeFn: hc.CloseIdleConnections,
	}
	for i := range cfg.Conns {
		req := fasthttp.AcquireRequest()
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetRequestURI("http://" + addr + path)
		req.Header.SetContentType("application/json")
		g.workers = append(g.workers, &httpWorker{
			hc: hc, pop: pop, req: req, resp: fasthttp.AcquireResponse(),
			batch: batch, timeout: cfg.AckTimeout, shard: shardBase + i,
		})
	}
	return g
}

type httpWorker struct {
	hc      *fasthttp.HostClient
	pop     *population
	req     *fasthttp.Request
	resp    *fasthttp.Response
	body    []byte
	batch   int
	timeout time.Duration
	shard   int
}

var rejectedItem = []byte(`"index"`)

func (w *httpWorker) lose(st *stats, n int64) { st.lost.Add(n) }

func (w *httpWorker) do(st *stats, jobs []job) {
	units := int64(w.batch)
	for _, j := range jobs {
		if w.batch == 1 {
			w.req.SetBodyRaw(w.pop.json[w.pop.user(j.k)])
		} else {
			b := append(w.body[:0], `{"heartbeats":[`...)
			for i := range w.batch {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, w.pop.json[w.pop.user(j.k*units+int64(i))]...)
			}
			w.body = append(b, "]}"...)
			w.req.SetBodyRaw(w.body)
		}
		err := w.hc.DoTimeout(w.req, w.resp, w.timeout)
		now := st.now()
		switch {
		case errors.Is(err, fasthttp.ErrTimeout):
			st.lost.Add(units)
			continue
		case err != nil:
			st.countErr(errConn, units)
			continue
		}
		lat := now - j.at
		if lat > int64(w.timeout) {
			st.lost.Add(units) // answered, but later than --ack-timeout
			st.late.Add(units)
			continue
		}
		st.shard(w.shard).record(lat)
		st.answer.Add(units)
		switch code := w.resp.StatusCode(); {
		case code == fasthttp.StatusOK:
			if w.batch > 1 {
				if r := int64(bytes.Count(w.resp.Body(), rejectedItem)); r > 0 {
					st.countErr(errRejected, r)
				}
			}
		case code == fasthttp.StatusTooManyRequests:
			st.countErr(errHTTP429, units)
		case code >= 400 && code < 500:
			st.countErr(errHTTP4xx, units)
		case code >= 500:
			st.countErr(errHTTP5xx, units)
		default:
			st.countErr(errHTTPOther, units)
		}
	}
}
