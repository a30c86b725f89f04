package loadtest

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// cpuSampler measures CPU use over a step: of one process (utime+stime in
// /proc/PID/stat) or of the whole machine (/proc/stat).
type cpuSampler struct {
	pid   int
	t0    time.Time
	busy0 float64
	all0  float64
	ok    bool
}

func (c *cpuSampler) begin() {
	c.t0 = time.Now()
	c.busy0, c.all0, c.ok = c.read()
}

// end returns the CPU percentage since begin (of one core for a process,
// of all cores for the machine) and what it measured; -1 if unknown.
func (c *cpuSampler) end() (float64, string) {
	busy, all, ok := c.read()
	if !ok || !c.ok {
		return -1, "unavailable"
	}
	if c.pid > 0 {
		wall := time.Since(c.t0).Seconds()
		if wall <= 0 {
			return -1, "unavailable"
		}
		return 100 * (busy - c.busy0) / clockTicks / wall, fmt.Sprintf("pid %d, %% of one core", c.pid)
	}
	if all-c.all0 <= 0 {
		return -1, "unavailable"
	}
	return 100 * (busy - c.busy0) / (all - c.all0), fmt.Sprintf("whole machine incl. the load generator, %% of %d cores", machineCPUs())
}

func (c *cpuSampler) read() (busy, all float64, ok bool) {
	if c.pid > 0 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(c.pid) + "/stat")
		if err != nil {
			return 0, 0, false
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			return 0, 0, false
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 13 { // state is f[0]; utime f[11], stime f[12]
			return 0, 0, false
		}
		u, err1 := strconv.ParseFloat(string(f[11]), 64)
		s, err2 := strconv.ParseFloat(string(f[12]), 64)
		return u + s, 0, err1 == nil && err2 == nil
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal (guest time is in user)
	var v [8]float64
	for i := range v {
		v[i], _ = strconv.ParseFloat(string(f[i+1]), 64)
		all += v[i]
	}
	return all - v[3] - v[4], all, true
}

// machineCPUs counts the machine's CPUs in /proc/stat (runtime.NumCPU is
// this process's affinity, one core when pinned with --cpu).
func machineCPUs() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(line) > 3 && string(line[:3]) == "cpu" && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return max(n, 1)
}
