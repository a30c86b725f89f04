package loadtest

import (
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"time"
)

// Targets the generator can drive.
const (
	TargetPresenced       = "presenced"
	TargetNullUDP         = "null-udp"
	TargetNullHTTP        = "null-http"
	TargetRawUDP          = "raw-udp"
	TargetRedisSetex      = "redis-setex"
	TargetRedisPipelined  = "redis-setex-pipelined"
	transportRedis        = "redis"
	maxStepSpan           = 72 * time.Hour // the UDP ring keeps 48 bits of ns
	defaultSweepDuration  = 5 * time.Minute
	defaultFixedDuration  = 10 * time.Second
	maxSweepSteps         = 40
	defaultRedisEntryTTL  = 150 * time.Second
	maxQueuedJobs         = 1 << 16
	progressEvery         = time.Second
	redisStartTimeout     = 5 * time.Second
	nullReplyIntervalMs   = 60000
	nullReplyTTLMs        = 150000
	defaultUDPAddr        = "127.0.0.1:7070"
	defaultHTTPAddr       = "127.0.0.1:7070"
	defaultRoomZipfS      = 1.1
	defaultTokenValidity  = time.Hour
	maxHistogramLatencyNs = int64(100 * time.Second)
	defaultFloodSource    = "127.0.0.2"
	defaultFloodSockets   = 2
	maxSourceIPs          = 4096
	statusChunk           = 1000 // users per POST /v1/status (--max-status-users default)
	floodUser             = "flood-0"
	floodRoom             = "flood-room"
	floodGarbagePool      = 256
)

var allTargets = []string{TargetPresenced, TargetNullUDP, TargetNullHTTP, TargetRawUDP, TargetRedisSetex, TargetRedisPipelined}

// Config is one loadtest invocation. DefaultConfig gives the defaults; the
// flag of each field is named in its comment.
type Config struct {
	Target    string // --target: presenced (default) or a baseline
	Transport string // --transport: udp (default), http, http-batch, mix
	UDPAddr   string // --udp-addr: presenced's UDP address (default 127.0.0.1:7070)
	HTTPAddr  string // --http-addr: presenced's HTTP address (default 127.0.0.1:7070)
	RedisAddr string // --redis-addr: Redis for the redis baselines; empty: start redis-server

	Users    int           // --users: simulated users (default 100000); ~300 bytes each
	Rooms    int           // --rooms: rooms the users are spread over (default 1000)
	RoomDist string        // --room-dist: uniform (default) or zipf room sizes
	Interval time.Duration // --interval: each user's heartbeat period (default 60s)
	Jitter   float64       // --jitter: 0..1 of a slot each send may move (default 0.1)
	Rate     float64       // --rate: heartbeats/s in total; 0 (default): users/interval

	Duration   time.Duration // --duration: a fixed run's length, or a sweep's total bound (default 10s; 5m for a sweep)
	Batch      int           // --batch: heartbeats per http-batch request, max pipeline for redis-setex-pipelined (default 100)
	Sockets    int           // --sockets: UDP source sockets (default 16)
	Conns      int           // --conns: HTTP / Redis connections and workers (default 64)
	AckTimeout time.Duration // --ack-timeout: an answer later than this is lost (default 1s)
	SecretFile string        // --secret-file: keyring; mint one scope-u token per user

	JSONFile string // --json: write the report as JSON
	HTMLFile string // --html: write the report as a self-contained HTML page

	Sweep        bool          // --sweep: step the rate up until p99 or loss breaks
	SweepFactor  float64       // --sweep-factor: rate multiplier per step (default 1.5)
	StepDuration time.Duration // --step-duration: length of a sweep step (default 5s)
	TargetP99    time.Duration // --target-p99: p99 a sustainable step keeps (default 1ms)
	MaxLoss      float64       // --max-loss: percent loss (and errors) a sustainable step keeps (default 0.1)
	TargetPID    int           // --target-pid: read this process's CPU; 0: whole machine

	Baselines []string // --baselines[=list]: also run these targets (bare flag: all that fit the transport)
	Quiet     bool     // --quiet: no progress line

	// The abuse scenario: one source floods while the users heartbeat.
	FloodRate    float64 // --flood-rate: flood datagrams/s; 0 (default): no flood; -1: as fast as it can
	FloodSockets int     // --flood-sockets: flood sockets, one sender goroutine each (default 2)
	FloodSource  string  // --flood-source: IP the flood sockets bind to (default 127.0.0.2)
	FloodKind    string  // --flood-kind: valid (heartbeats for one user, ack requested; default) or garbage
	SourceIP     string  // --source-ip: IPs (list, or CIDR) the normal traffic binds to; empty: the kernel's choice
	CheckOnline  bool    // --check-online: after each run, ask POST /v1/status how many users are online
	CompareFlood bool    // --compare-flood: run the target without the flood, then with it, and compare p99s
	APIToken     string  // --api-token: bearer token for POST /v1/status

	// Measuring the server's side.
	FlatOut       bool   // --flat-out: UDP senders send full batches unpaced for each step's duration (--rate only sizes the ack ring)
	NoAck         bool   // --no-ack: UDP datagrams do not ask for an ack; intake is read from --target-metrics
	TargetMetrics string // --target-metrics: URL of the target's Prometheus /metrics, read before and after each step
	Name          string // --name: the target's name in the report (default: --target)
	CPU           string // --cpu: CPU list this process runs on (e.g. 0 or 0-1); it re-executes itself pinned
	CPUProfile    string // --cpuprofile: write the generator's own CPU profile here
	Serve         string // --serve: run this do-nothing target on --udp-addr / --http-addr until SIGTERM instead of generating load

	durationSet bool
	sourceIPs   []net.IP // parsed --source-ip: socket/connection i binds sourceIPs[i%len]
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Target: TargetPresenced, Transport: "udp",
		UDPAddr: defaultUDPAddr, HTTPAddr: defaultHTTPAddr,
		Users: 100000, Rooms: 1000, RoomDist: "uniform",
		Interval: 60 * time.Second, Jitter: 0.1,
		Duration: defaultFixedDuration, Batch: 100, Sockets: 16, Conns: 64,
		AckTimeout: time.Second, SweepFactor: 1.5, StepDuration: 5 * time.Second,
		TargetP99: time.Millisecond, MaxLoss: 0.1,
		FloodSockets: defaultFloodSockets, FloodSource: defaultFloodSource, FloodKind: "valid",
	}
}

// baselineFlag is --baselines: bare, it means every baseline that fits the
// transport; with a value, a comma-separated list of targets.
type baselineFlag struct{ list *[]string }

func (b baselineFlag) String() string {
	if b.list == nil {
		return ""
	}
	return strings.Join(*b.list, ",")
}
func (b baselineFlag) IsBoolFlag() bool { return true }
func (b baselineFlag) Set(s string) error {
	switch s {
	case "true":
		*b.list = []string{"all"}
	case "false", "":
		*b.list = nil
	default:
		*b.list = strings.Split(s, ",")
	}
	return nil
}

// parseFlags parses args into a validated Config. The error names the flag.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("presenced loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Target, "target", cfg.Target, "target: "+strings.Join(allTargets, "|"))
	fs.StringVar(&cfg.Transport, "transport", cfg.Transport, "udp|http|http-batch|mix (redis targets speak Redis)")
	fs.StringVar(&cfg.UDPAddr, "udp-addr", cfg.UDPAddr, "presenced UDP address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "presenced HTTP address")
	fs.StringVar(&cfg.RedisAddr, "redis-addr", "", "Redis for the redis baselines (empty: start redis-server on a free port)")
	fs.IntVar(&cfg.Users, "users", cfg.Users, "simulated users")
	fs.IntVar(&cfg.Rooms, "rooms", cfg.Rooms, "rooms")
	fs.StringVar(&cfg.RoomDist, "room-dist", cfg.RoomDist, "room sizes: uniform|zipf")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "heartbeat period per user (rate = users/interval unless --rate)")
	fs.Float64Var(&cfg.Jitter, "jitter", cfg.Jitter, "0..1: how far in its slot each send may move")
	fs.Float64Var(&cfg.Rate, "rate", 0, "total heartbeats/s (0: users/interval); the first step of a sweep")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of a run; bounds a whole sweep (default 5m with --sweep)")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "heartbeats per http-batch request; max pipeline for redis-setex-pipelined")
	fs.IntVar(&cfg.Sockets, "sockets", cfg.Sockets, "UDP source sockets")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "HTTP/Redis connections (and workers)")
	fs.DurationVar(&cfg.AckTimeout, "ack-timeout", cfg.AckTimeout, "a request unanswered after this is lost")
	fs.StringVar(&cfg.SecretFile, "secret-file", "", "keyring file: mint one scope-u token per user")
	fs.StringVar(&cfg.JSONFile, "json", "", "write the report as JSON to this file")
	fs.StringVar(&cfg.HTMLFile, "html", "", "write the report as a self-contained HTML page")
	fs.BoolVar(&cfg.Sweep, "sweep", false, "step the rate up until --target-p99 or --max-loss breaks")
	fs.Float64Var(&cfg.SweepFactor, "sweep-factor", cfg.SweepFactor, "rate multiplier per sweep step")
	fs.DurationVar(&cfg.StepDuration, "step-duration", cfg.StepDuration, "length of a sweep step")
	fs.DurationVar(&cfg.TargetP99, "target-p99", cfg.TargetP99, "p99 latency a sustainable step keeps")
	fs.Float64Var(&cfg.MaxLoss, "max-loss", cfg.MaxLoss, "percent of requests lost or failed a sustainable step keeps")
	fs.IntVar(&cfg.TargetPID, "target-pid", 0, "read the CPU of this process (0: the whole machine)")
	fs.Var(baselineFlag{&cfg.Baselines}, "baselines", "also run baselines: bare for all that fit the transport, or a list: "+strings.Join(allTargets[1:], ","))
	fs.BoolVar(&cfg.Quiet, "quiet", false, "no progress line on stderr")
	fs.Float64Var(&cfg.FloodRate, "flood-rate", 0, "flood datagrams/s from --flood-source to --udp-addr during each run (0: no flood, -1: as fast as it can)")
	fs.IntVar(&cfg.FloodSockets, "flood-sockets", cfg.FloodSockets, "flood sockets, one sending goroutine each")
	fs.StringVar(&cfg.FloodSource, "flood-source", cfg.FloodSource, "IP the flood sockets bind to (any of 127.0.0.0/8 works on Linux loopback)")
	fs.StringVar(&cfg.FloodKind, "flood-kind", cfg.FloodKind, "valid (heartbeats for one user, ack requested) | garbage (random bytes)")
	fs.StringVar(&cfg.SourceIP, "source-ip", "", "IPs the normal traffic binds to: one, a comma-separated list or a CIDR, spread over sockets/connections (empty: kernel's choice)")
	fs.BoolVar(&cfg.CheckOnline, "check-online", false, "after each run, count the simulated users presenced reports offline (POST /v1/status on --http-addr)")
	fs.BoolVar(&cfg.CompareFlood, "compare-flood", false, "run the target twice, without then with --flood-rate, and report the p99 ratio")
	fs.StringVar(&cfg.APIToken, "api-token", "", "bearer token for POST /v1/status (presenced --api-token-file)")
	fs.BoolVar(&cfg.FlatOut, "flat-out", false, "UDP: send as fast as the generator can for each step's --duration (no pacing)")
	fs.BoolVar(&cfg.NoAck, "no-ack", false, "UDP: datagrams do not ask for an ack (read the server's intake with --target-metrics)")
	fs.StringVar(&cfg.TargetMetrics, "target-metrics", "", "URL of the target's /metrics (e.g. http://127.0.0.1:7070/metrics): server-side intake, log records, per step")
	fs.StringVar(&cfg.Name, "name", "", "the target's name in the report (default: --target)")
	fs.StringVar(&cfg.CPU, "cpu", "", "run the generator on these CPUs only (a list such as 0 or 0,1 or 0-1; re-executes itself pinned)")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write the generator's own CPU profile to this file (go tool pprof)")
	fs.StringVar(&cfg.Serve, "serve", "", "run a do-nothing target ("+strings.Join([]string{TargetNullUDP, TargetRawUDP, TargetNullHTTP}, "|")+") on --udp-addr/--http-addr until SIGTERM, with /metrics on --http-addr")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "duration" {
			cfg.durationSet = true
		}
	})
	if cfg.Sweep && !cfg.durationSet {
		cfg.Duration = defaultSweepDuration
	}
	return cfg, cfg.Validate()
}

func oneOf(s string, set ...string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// Validate checks every field; the error names the flag.
func (c *Config) Validate() error {
	bad := func(flag, format string, a ...any) error {
		return fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...))
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case !oneOf(c.Target, allTargets...):
		return bad("target", "%q is not one of %s", c.Target, strings.Join(allTargets, ", "))
	case !oneOf(c.Transport, "udp", "http", "http-batch", "mix"):
		return bad("transport", "%q is not one of udp, http, http-batch, mix", c.Transport)
	case c.UDPAddr == "":
		return bad("udp-addr", "empty")
	case c.HTTPAddr == "":
		return bad("http-addr", "empty")
	case c.Users < 1 || c.Users > 10_000_000:
		return bad("users", "%d is not in 1..10000000", c.Users)
	case c.Rooms < 1 || c.Rooms > 1_000_000:
		return bad("rooms", "%d is not in 1..1000000", c.Rooms)
	case !oneOf(c.RoomDist, "uniform", "zipf"):
		return bad("room-dist", "%q is not uniform or zipf", c.RoomDist)
	case c.Interval < time.Millisecond || c.Interval > 24*time.Hour:
		return bad("interval", "%v is not in 1ms..24h", c.Interval)
	case !finite(c.Jitter) || c.Jitter < 0 || c.Jitter > 1:
		return bad("jitter", "%v is not in 0..1", c.Jitter)
	case !finite(c.Rate) || c.Rate < 0 || c.Rate > 10_000_000:
		return bad("rate", "%v is not in 0..10000000 (0: users/interval)", c.Rate)
	case c.Duration < 100*time.Millisecond || c.Duration > maxStepSpan:
		return bad("duration", "%v is not in 100ms..%v", c.Duration, maxStepSpan)
	case c.Batch < 1 || c.Batch > 1000:
		return bad("batch", "%d is not in 1..1000", c.Batch)
	case c.Sockets < 1 || c.Sockets > 1024:
		return bad("sockets", "%d is not in 1..1024", c.Sockets)
	case c.Conns < 1 || c.Conns > 4096:
		return bad("conns", "%d is not in 1..4096", c.Conns)
	case c.AckTimeout < time.Millisecond || c.AckTimeout > time.Minute:
		return bad("ack-timeout", "%v is not in 1ms..1m", c.AckTimeout)
	case !finite(c.SweepFactor) || c.SweepFactor <= 1 || c.SweepFactor > 100:
		return bad("sweep-factor", "%v is not in (1, 100]", c.SweepFactor)
	case c.StepDuration < 100*time.Millisecond || c.StepDuration > maxStepSpan:
		return bad("step-duration", "%v is not in 100ms..%v", c.StepDuration, maxStepSpan)
	case c.TargetP99 <= 0:
		return bad("target-p99", "%v must be positive", c.TargetP99)
	case !finite(c.MaxLoss) || c.MaxLoss < 0 || c.MaxLoss > 100:
		return bad("max-loss", "%v is not a percentage in 0..100", c.MaxLoss)
	case c.TargetPID < 0:
		return bad("target-pid", "%d is negative", c.TargetPID)
	case !finite(c.FloodRate) || (c.FloodRate < 0 && c.FloodRate != -1) || c.FloodRate > 10_000_000:
		return bad("flood-rate", "%v is not -1 (as fast as it can) or in 0..10000000", c.FloodRate)
	case c.FloodSockets < 1 || c.FloodSockets > 64:
		return bad("flood-sockets", "%d is not in 1..64", c.FloodSockets)
	case net.ParseIP(c.FloodSource) == nil:
		return bad("flood-source", "%q is not an IP address", c.FloodSource)
	case !oneOf(c.FloodKind, "valid", "garbage"):
		return bad("flood-kind", "%q is not valid or garbage", c.FloodKind)
	case c.CompareFlood && c.FloodRate == 0:
		return bad("compare-flood", "needs --flood-rate (-1 or a rate)")
	case c.CompareFlood && c.Sweep:
		return bad("compare-flood", "does not combine with --sweep (it compares two fixed runs)")
	case c.CheckOnline && c.Target != TargetPresenced:
		return bad("check-online", "applies to --target=presenced only")
	case c.FloodRate != 0 && c.Target == TargetRedisSetex, c.FloodRate != 0 && c.Target == TargetRedisPipelined:
		return bad("flood-rate", "floods a UDP target; --target=%s is Redis", c.Target)
	case (c.FlatOut || c.NoAck) && c.Transport != "udp":
		return bad("transport", "--flat-out and --no-ack apply to udp only")
	case c.FlatOut && c.Sweep, c.NoAck && c.Sweep:
		return bad("sweep", "does not combine with --flat-out or --no-ack (a step's sustainability needs paced, acknowledged requests)")
	case c.NoAck && c.CompareFlood:
		return bad("compare-flood", "does not combine with --no-ack (it compares the users' p99)")
	case c.Serve != "" && !oneOf(c.Serve, TargetNullUDP, TargetRawUDP, TargetNullHTTP):
		return bad("serve", "%q is not one of %s, %s, %s", c.Serve, TargetNullUDP, TargetRawUDP, TargetNullHTTP)
	case c.TargetMetrics != "" && !strings.HasPrefix(c.TargetMetrics, "http://"):
		return bad("target-metrics", "%q is not an http:// URL", c.TargetMetrics)
	}
	if _, err := parseCPUList(c.CPU); err != nil {
		return bad("cpu", "%v", err)
	}
	ips, err := parseSourceIPs(c.SourceIP)
	if err != nil {
		return bad("source-ip", "%v", err)
	}
	c.sourceIPs = ips
	if c.Rate == 0 && float64(c.Users)/c.Interval.Seconds() > 10_000_000 {
		return bad("interval", "users/interval is over 10000000 heartbeats/s")
	}
	if err := c.checkTransport(c.Target, c.Transport); err != nil {
		return err
	}
	if c.Sweep && c.Duration < c.StepDuration {
		return bad("duration", "%v is shorter than one --step-duration (%v)", c.Duration, c.StepDuration)
	}
	for _, b := range c.Baselines {
		if b == "all" {
			continue
		}
		if !oneOf(b, allTargets[1:]...) {
			return bad("baselines", "%q is not one of %s", b, strings.Join(allTargets[1:], ", "))
		}
	}
	return nil
}

// parseSourceIPs parses --source-ip: empty, or comma-separated IPs and
// CIDR prefixes (a prefix gives its addresses in order, at most 4096).
func parseSourceIPs(s string) ([]net.IP, error) {
	if s == "" {
		return nil, nil
	}
	var out []net.IP
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if ip := net.ParseIP(f); ip != nil {
			out = append(out, ip)
			continue
		}
		ip, nw, err := net.ParseCIDR(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR prefix", f)
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		for a := ip.Mask(nw.Mask); nw.Contains(a) && len(out) < maxSourceIPs; a = nextIP(a) {
			out = append(out, a)
		}
	}
	if len(out) > maxSourceIPs {
		return nil, fmt.Errorf("more than %d addresses", maxSourceIPs)
	}
	return out, nil
}

// nextIP returns ip + 1 (wrapping to all zeros after all ones).
func nextIP(ip net.IP) net.IP {
	out := append(net.IP(nil), ip...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// sourceIP returns the address socket or connection i of the normal
// traffic binds to; nil: the kernel's choice.
func (c *Config) sourceIP(i int) net.IP {
	if len(c.sourceIPs) == 0 {
		return nil
	}
	return c.sourceIPs[i%len(c.sourceIPs)]
}

// checkTransport reports whether target can be driven over transport.
func (c *Config) checkTransport(target, transport string) error {
	switch target {
	case TargetNullUDP, TargetRawUDP:
		if transport != "udp" {
			return fmt.Errorf("--transport: %s does not apply to --target=%s (use udp)", transport, target)
		}
	case TargetNullHTTP:
		if transport != "http" && transport != "http-batch" {
			return fmt.Errorf("--transport: %s does not apply to --target=%s (use http or http-batch)", transport, target)
		}
	}
	return nil
}

// baseRate is the heartbeat rate of a fixed run, or a sweep's first step.
func (c *Config) baseRate() float64 {
	if c.Rate > 0 {
		return c.Rate
	}
	return float64(c.Users) / c.Interval.Seconds()
}

// plan is one target run: which target, over which transport, and
// whether a flood runs beside it.
type plan struct {
	target    string
	transport string
	flood     bool
}

// plans returns the target runs in order: the target (with --compare-flood
// twice: without the flood, then with it), then its baselines, which are
// never flooded.
func (c *Config) plans() []plan {
	out := []plan{{c.Target, c.transportFor(c.Target), c.FloodRate != 0 && !c.CompareFlood}}
	if c.CompareFlood {
		out = append(out, plan{c.Target, c.transportFor(c.Target), true})
	}
	want := c.Baselines
	if len(want) == 1 && want[0] == "all" {
		want = nil
		switch c.Transport {
		case "udp":
			want = []string{TargetNullUDP, TargetRawUDP}
		case "http", "http-batch":
			want = []string{TargetNullHTTP}
		case "mix":
			want = []string{TargetNullUDP, TargetRawUDP, TargetNullHTTP}
		}
		want = append(want, TargetRedisSetex, TargetRedisPipelined)
	}
	for _, b := range want {
		if b == c.Target || b == "all" {
			continue
		}
		out = append(out, plan{b, c.transportFor(b), false})
	}
	return out
}

// transportFor picks the transport a target is driven over: the configured
// one where it applies, else the target's own.
func (c *Config) transportFor(target string) string {
	switch target {
	case TargetNullUDP, TargetRawUDP:
		return "udp"
	case TargetNullHTTP:
		if c.Transport == "http-batch" {
			return "http-batch"
		}
		return "http"
	case TargetRedisSetex, TargetRedisPipelined:
		return transportRedis
	}
	return c.Transport
}
