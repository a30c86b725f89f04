package loadtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Counters read from the target's /metrics (--target-metrics). The
// do-nothing targets run with --serve export the same names.
const (
	metricDatagrams  = "presenced_udp_datagrams_total"
	metricReplies    = "presenced_udp_replies_total"
	metricHeartbeats = "presenced_heartbeats_total"
	metricWALRecords = "presenced_wal_records_total"
	// metricKernelDrops is what the server itself reports its sockets'
	// queues dropped (also from a remote target, unlike /proc/net/udp);
	// metricShedding its overload state at the end of the step.
	metricKernelDrops = "presenced_udp_kernel_drops_total"
	metricShedding    = "presenced_overload_shedding"
)

var scrapedMetrics = []string{metricDatagrams, metricReplies, metricHeartbeats, metricWALRecords, metricKernelDrops, metricShedding}

// ServerSide is a step as the target saw it: counters from its /metrics
// (--target-metrics) and CPU from /proc/<pid>/stat (--target-pid), both
// read before and after the step. Rates are over the step's send span.
type ServerSide struct {
	DatagramsPerS       float64 `json:"datagrams_per_s,omitzero"` // UDP datagrams the target took in
	RepliesPerS         float64 `json:"replies_per_s,omitzero"`
	Heartbeats          int64   `json:"heartbeats,omitzero"` // all outcomes, all transports
	WALRecords          int64   `json:"wal_records,omitzero"`
	RecordsPerHeartbeat float64 `json:"wal_records_per_heartbeat,omitzero"`
	CPUSeconds          float64 `json:"cpu_seconds,omitzero"` // the target process's, -1: unknown
	CPUCores            int     `json:"cpu_cores,omitzero"`   // CPUs the target may run on
	// RunqueueWaitS is how long the target's threads were runnable but
	// waited for a CPU (/proc/<pid>/task/*/schedstat): on a shared machine,
	// CPU other processes took from it.
	RunqueueWaitS float64 `json:"runqueue_wait_s,omitzero"`
	// CPU per heartbeat taken in: microseconds, and seconds per million.
	CPUUsPerHeartbeat float64 `json:"cpu_us_per_heartbeat,omitzero"`
	CPUSPerMillion    float64 `json:"cpu_s_per_million_heartbeats,omitzero"`
	// KernelDrops is the machine's UDP RcvbufErrors during the step
	// (/proc/net/snmp): datagrams a full socket queue dropped, on either
	// side; ServerQueueDrops are those of the sockets bound to the target's
	// UDP port (/proc/net/udp): the server did not read fast enough.
	KernelDrops      int64 `json:"kernel_udp_drops"`
	ServerQueueDrops int64 `json:"server_queue_drops"`
	// ReportedKernelDrops is the target's own presenced_udp_kernel_drops_total
	// over the step (-1: the target does not export it); Shedding is its
	// presenced_overload_shedding at the end of the step.
	ReportedKernelDrops int64  `json:"reported_kernel_drops"`
	Shedding            bool   `json:"shedding,omitzero"`
	Error               string `json:"error,omitempty"`
}

// serverProbe takes the before-and-after readings of one step.
type serverProbe struct {
	url     string
	pid     int
	before  map[string]float64
	cpu0    float64
	wait0   float64
	drops0  int64
	port    int
	sdrops0 int64
}

func newServerProbe(url string, pid, udpPort int) *serverProbe {
	p := &serverProbe{url: url, pid: pid, port: udpPort}
	p.sdrops0 = udpPortDrops(udpPort)
	if url != "" {
		p.before, _ = scrapeMetrics(url)
	}
	p.cpu0 = procCPUSeconds(pid)
	p.wait0 = runqueueWait(pid)
	p.drops0 = udpRcvbufErrors()
	return p
}

// end returns the step's server-side figures; heartbeats is what the
// generator counts as taken in when the target has no metrics.
func (p *serverProbe) end(span float64, fallbackHeartbeats int64) *ServerSide {
	s := &ServerSide{CPUSeconds: -1, ReportedKernelDrops: -1}
	s.KernelDrops = max(0, udpRcvbufErrors()-p.drops0)
	s.ServerQueueDrops = max(0, udpPortDrops(p.port)-p.sdrops0)
	if p.pid > 0 {
		if c := procCPUSeconds(p.pid); c >= 0 && p.cpu0 >= 0 {
			s.CPUSeconds = c - p.cpu0
		}
		if w := runqueueWait(p.pid); w >= 0 && p.wait0 >= 0 {
			s.RunqueueWaitS = max(0, w-p.wait0)
		}
		var set unix.CPUSet
		if unix.SchedGetaffinity(p.pid, &set) == nil {
			s.CPUCores = set.Count()
		}
	}
	hb := fallbackHeartbeats
	if p.url != "" {
		after, err := scrapeMetrics(p.url)
		switch {
		case err != nil:
			s.Error = err.Error()
		case p.before == nil:
			s.Error = "cannot read --target-metrics before the step"
		default:
			d := func(name string) float64 { return after[name] - p.before[name] }
			span = max(span, 1e-9)
			s.DatagramsPerS = d(metricDatagrams) / span
			s.RepliesPerS = d(metricReplies) / span
			s.Heartbeats = int64(d(metricHeartbeats))
			s.WALRecords = int64(d(metricWALRecords))
			if _, ok := after[metricKernelDrops]; ok {
				s.ReportedKernelDrops = int64(d(metricKernelDrops))
			}
			s.Shedding = after[metricShedding] == 1
			if s.Heartbeats > 0 {
				hb = s.Heartbeats
				s.RecordsPerHeartbeat = float64(s.WALRecords) / float64(s.Heartbeats)
			}
		}
	}
	if s.CPUSeconds > 0 && hb > 0 {
		s.CPUUsPerHeartbeat = s.CPUSeconds / float64(hb) * 1e6
		s.CPUSPerMillion = s.CPUSeconds / float64(hb) * 1e6
	}
	return s
}

// scrapeMetrics reads the counters in scrapedMetrics from a Prometheus
// text page, each summed over its labels.
func scrapeMetrics(url string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, fmt.Errorf("cannot read --target-metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("cannot read --target-metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if !oneOf(name, scrapedMetrics...) {
			continue
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read --target-metrics: %w", err)
	}
	return out, nil
}

// procCPUSeconds is a process's user+system CPU time; -1 if unknown.
func procCPUSeconds(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	c := cpuSampler{pid: pid}
	busy, _, ok := c.read()
	if !ok {
		return -1
	}
	return busy / clockTicks
}

// runqueueWait sums the seconds pid's threads waited runnable for a CPU
// (second field of /proc/<pid>/task/*/schedstat); -1 if unknown. Threads
// that exited in between are not counted.
func runqueueWait(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	var ns float64
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			ns += v
		}
	}
	return ns / 1e9
}

// selfCPUSeconds is this process's CPU time from getrusage(2): the
// generator's own cost, senders, receivers and bookkeeping.
func selfCPUSeconds() float64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// udpRcvbufErrors is the machine's UDP RcvbufErrors counter; 0 if unknown.
func udpRcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var head []string
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == "RcvbufErrors" && i < len(f) {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				return v
			}
		}
		return 0
	}
	return 0
}

// udpPortDrops sums the drops of the UDP sockets bound to local port
// (/proc/net/udp and udp6, last column); 0 if unknown.
func udpPortDrops(port int) int64 {
	if port <= 0 {
		return 0
	}
	want := fmt.Sprintf(":%04X", port)
	var total int64
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			fs := strings.Fields(string(line))
			if len(fs) < 13 || !strings.HasSuffix(fs[1], want) {
				continue
			}
			v, _ := strconv.ParseInt(fs[len(fs)-1], 10, 64)
			total += v
		}
	}
	return total
}

// Limits a step can name.
const (
	limitGenerator = "generator CPU"
	limitServer    = "server CPU"
	limitLoss      = "loss"
	limitNone      = "none"
	saturated      = 0.85 // of the cores a side may use
)

// limitOf names what held the step back: the generator's CPU (its own
// getrusage time, plus the time its threads waited for a core, against
// the cores it may use; or a schedule it could not keep), the server's CPU
// (/proc/<pid>/stat and schedstat against its affinity), or loss
// (datagrams dropped with neither side out of CPU). More than one may be
// named; "none" when nothing was near its limit, so a higher rate would be
// carried. Flat out the generator is always busy, so there the question is
// only whether the server kept up: its socket queue overflowing says it
// did not.
func limitOf(s *StepResult, cfg *Config) string {
	genCores := float64(max(1, s.LoadgenCores))
	genBusy := s.LoadgenCPUPct / 100 / genCores
	genWait := min(max(0, 1-genBusy), s.LoadgenWaitPct/100/genCores)
	genText := limitGenerator
	if genWait > 0.05 {
		genText = fmt.Sprintf("%s (%.0f%% busy, %.0f%% waiting for a shared core)", limitGenerator, 100*genBusy, 100*genWait)
	}
	srvBusy, srvText := -1.0, limitServer
	ss := s.Server
	if ss != nil && ss.CPUSeconds >= 0 && ss.CPUCores > 0 && s.SendSpanS > 0 {
		srvBusy = ss.CPUSeconds / s.SendSpanS / float64(ss.CPUCores)
		if wait := min(max(0, 1-srvBusy), ss.RunqueueWaitS/s.SendSpanS/float64(ss.CPUCores)); wait > 0.05 {
			srvText = fmt.Sprintf("%s (%.0f%% busy, %.0f%% waiting for a shared core)", limitServer, 100*srvBusy, 100*wait)
		}
	}
	serverDropped := ss != nil && ss.ServerQueueDrops > s.Sent/1000
	lossy := s.LossPct+s.ErrorPct > cfg.MaxLoss || ss != nil && ss.KernelDrops > s.Sent/1000
	if cfg.FlatOut {
		switch {
		case serverDropped:
			return srvText
		case lossy:
			return limitLoss
		}
		return genText
	}
	var out []string
	switch {
	case s.LoadgenCPUPct < 0:
	case genBusy >= saturated, genBusy+genWait >= saturated && s.SentPerS < 0.97*s.OfferedRate:
		out = append(out, genText)
	case s.SentPerS < 0.97*s.OfferedRate:
		out = append(out, limitGenerator+" (fell behind its schedule)")
	}
	if srvBusy >= saturated || srvBusy >= 0 && serverDropped {
		out = append(out, srvText)
	}
	if lossy && len(out) == 0 {
		out = append(out, limitLoss)
	}
	if len(out) == 0 {
		return limitNone
	}
	return strings.Join(out, " + ")
}

// udpPort is the port of host:port; 0 if it has none.
func udpPort(addr string) int {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(port)
	return p
}
