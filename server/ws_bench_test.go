package server_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/presenced/presenced/internal/testkit"
)

// BenchmarkHeartbeatConns10k holds N connections (default 10,000) to a real
// presenced process, each heartbeating once a second, over WebSocket and
// over HTTP keep-alive, and reports the server's CPU, its resident memory
// per connection and the client-side ack latency. Run it alone:
//
//	go test -run '^$' -bench HeartbeatConns10k -benchtime 1x ./server/
//
// It builds the binary (testkit.Build); PRESENCED_BIN names one to use
// instead.
//
// BENCH_CONNS and BENCH_SECONDS change the connection count and the
// measured period (default 15 s after all connections are up).
func BenchmarkHeartbeatConns10k(b *testing.B) {
	bin := os.Getenv("PRESENCED_BIN")
	if bin == "" {
		bin = testkit.BuildT(b)
	}
	conns := benchEnvInt("BENCH_CONNS", 10000)
	secs := benchEnvInt("BENCH_SECONDS", 15)
	for _, mode := range []string{"ws", "http"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				r := runConnBench(b, bin, mode, conns, time.Duration(secs)*time.Second)
				b.ReportMetric(r.cpu*100, "server-cpu-%")
				b.ReportMetric(r.bytesPerConn, "server-rss-bytes/conn")
				b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ack-ms")
				b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ack-ms")
				b.ReportMetric(float64(r.acks)/float64(secs), "acks/s")
				b.Logf("%s: %d conns, %d acks in %ds (%d errors), server CPU %.1f%% of one core, RSS %.1f MB idle -> %.1f MB (%.0f bytes/conn), ack p50 %s p99 %s max %s",
					mode, conns, r.acks, secs, r.errors, r.cpu*100, float64(r.rssBase)/1e6, float64(r.rssConn)/1e6, r.bytesPerConn, r.p50, r.p99, r.max)
			}
		})
	}
}

type connBenchResult struct {
	cpu              float64 // cores used by the server
	rssBase, rssConn int64
	bytesPerConn     float64
	p50, p99, max    time.Duration
	acks, errors     int
}

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// procStat returns the process's CPU time and resident set size.
func procStat(b *testing.B, pid int) (cpu time.Duration, rss int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, pages * int64(os.Getpagesize())
}

func runConnBench(b *testing.B, bin, mode string, conns int, dur time.Duration) connBenchResult {
	p := testkit.StartProc(b, testkit.ProcConfig{Bin: bin, Args: []string{"--udp-addr", "", "--data-dir", "",
		"--heartbeat-min-gap", "0", "--source-rate", "0", "--http-max-conns", "20000", "--http-max-conns-per-ip", "0", "--max-ws-conns", "20000",
		"--http-idle-timeout", "300s", "--leave-delay", "0"}})
	defer p.Stop(os.Kill)
	addr := p.Addr
	pid := p.Cmd.Process.Pid
	time.Sleep(500 * time.Millisecond)
	_, rssBase := procStat(b, pid)

	type client struct {
		beat func() error
		done func()
	}
	dial := func(i int) (client, error) {
		user, room := fmt.Sprintf("user-%d", i), fmt.Sprintf("room-%d", i%100)
		if mode == "ws" {
			c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/v1/ws", nil)
			if err != nil {
				return client{}, err
			}
			msg := []byte(`{"op":"heartbeat","ref":1,"user":"` + user + `","room":"` + room + `"}`)
			return client{beat: func() error {
				if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
					return err
				}
				_, ans, err := c.ReadMessage()
				if err == nil && !strings.Contains(string(ans), `"ok":true`) {
					err = fmt.Errorf("answer %s", ans)
				}
				return err
			}, done: func() { c.Close() }}, nil
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return client{}, err
		}
		body := `{"user":"` + user + `","room":"` + room + `"}`
		req := []byte("POST /v1/heartbeat HTTP/1.1\r\nHost: presenced\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		br := bufio.NewReader(c)
		return client{beat: func() error {
			if _, err := c.Write(req); err != nil {
				return err
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return err
			}
			_, _ = br.Discard(int(resp.ContentLength))
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}, done: func() { c.Close() }}, nil
	}

	// Connect everything (200 dials at a time), one heartbeat each.
	clients := make([]client, conns)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	var mu sync.Mutex
	var firstErr error
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(i)
			if err == nil {
				err = c.beat()
			}
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("%s: cannot connect: %v", mode, firstErr)
	}
	defer func() {
		for _, c := range clients {
			c.done()
		}
	}()
	time.Sleep(time.Second)
	_, rssConn := procStat(b, pid)

	// Steady state: each connection heartbeats once a second, spread evenly.
	cpu0, _ := procStat(b, pid)
	start := time.Now()
	end := start.Add(dur)
	lat := make([][]time.Duration, conns)
	errs := make([]int, conns)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := start.Add(time.Duration(rand.Int64N(int64(time.Second))))
			for next.Before(end) {
				time.Sleep(time.Until(next))
				t0 := time.Now()
				if err := clients[i].beat(); err != nil {
					errs[i]++
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
				next = next.Add(time.Second)
			}
		}()
	}
	wg.Wait()
	cpu1, _ := procStat(b, pid)
	elapsed := time.Since(start)
	var all []time.Duration
	r := connBenchResult{rssBase: rssBase, rssConn: rssConn}
	for i := range lat {
		all = append(all, lat[i]...)
		r.errors += errs[i]
	}
	slices.Sort(all)
	r.acks = len(all)
	if len(all) > 0 {
		r.p50, r.p99, r.max = all[len(all)/2], all[len(all)*99/100], all[len(all)-1]
	}
	r.cpu = float64(cpu1-cpu0) / float64(elapsed)
	r.bytesPerConn = float64(rssConn-rssBase) / float64(conns)
	return r
}
