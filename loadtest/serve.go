package loadtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// serve runs the do-nothing target cfg.Serve as a process of its own, so
// it can be pinned apart from the generator (taskset -c 1) and measured as
// presenced is: a UDP target listens on --udp-addr and answers GET
// /metrics on --http-addr with presenced's counter names
// (presenced_udp_datagrams_total, presenced_udp_replies_total,
// presenced_heartbeats_total); null-http listens on --http-addr. It runs
// until ctx is done (SIGINT, SIGTERM).
func serve(ctx context.Context, cfg *Config, stdout, stderr io.Writer) int {
	var (
		cnt   *nullCounters
		stops []func()
		err   error
	)
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	switch cfg.Serve {
	case TargetNullUDP:
		var s *nullUDP
		var stop func()
		if s, stop, err = startNullUDPAt(cfg.UDPAddr); err == nil {
			cnt, stops = &s.nullCounters, append(stops, stop)
		}
	case TargetRawUDP:
		var sa *unix.SockaddrInet4
		if sa, err = inet4Sockaddr(cfg.UDPAddr); err == nil {
			var r *rawUDP
			var stop func()
			if r, stop, err = startRawUDPAt(sa); err == nil {
				cnt, stops = &r.nullCounters, append(stops, stop)
			}
		}
	}
	if err == nil {
		var stop func()
		if _, stop, err = startNullHTTPAt(cfg.HTTPAddr, cnt); err == nil {
			stops = append(stops, stop)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "presenced loadtest: --serve %s: %v\n", cfg.Serve, err)
		return 1
	}
	fmt.Fprintf(stdout, "serving %s: udp %s, http %s (metrics on /metrics)\n", cfg.Serve, cfg.UDPAddr, cfg.HTTPAddr)
	<-ctx.Done()
	return 0
}

// inet4Sockaddr parses an IPv4 host:port (raw-udp binds IPv4 only).
func inet4Sockaddr(addr string) (*unix.SockaddrInet4, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("cannot parse %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	ip := net.ParseIP(host).To4()
	if err != nil || ip == nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("cannot parse %q: raw-udp needs an IPv4 host:port", addr)
	}
	return &unix.SockaddrInet4{Port: p, Addr: [4]byte(ip)}, nil
}
