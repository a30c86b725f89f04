package server

import (
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soMeminfo is SO_MEMINFO (asm-generic/socket.h; x/sys/unix lacks it): a
// socket's memory counters, SK_MEMINFO_DROPS among them.
const soMeminfo = 55

// kernelDrops sums the kernel's receive-queue drops (SK_MEMINFO_DROPS) of
// this process's UDP sockets bound to one port: gnet's listeners, one per
// event loop with SO_REUSEPORT. gnet does not hand out its per-loop
// sockets, so they are found by their bound port among this process's
// descriptors (/proc/self/fd and getsockname), once after gnet booted and
// again while fewer than want were found. Each socket's counter is 32 bits
// and wraps; the sum here is kept per socket as deltas, so it only grows.
// sample is safe for concurrent use (a scrape and the overload monitor).
type kernelDrops struct {
	mu struct {
		sync.Mutex
		port  int // 0: no UDP (sample returns 0)
		want  int
		socks []dropSock
		total uint64
	}
}

type dropSock struct {
	fd   int
	last uint32
}

// watch starts counting the sockets bound to port; want is how many there
// should be (the event loops).
func (k *kernelDrops) watch(port, want int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mu.port, k.mu.want, k.mu.socks = port, want, nil
	k.findLocked()
}

// forget stops reading the sockets (before gnet closes them, so a reused
// descriptor is never read); the total keeps its value.
func (k *kernelDrops) forget() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mu.port, k.mu.socks = 0, nil
}

// sample reads every socket's drops and returns the running total.
func (k *kernelDrops) sample() uint64 {
	if k == nil {
		return 0
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.mu.port == 0 {
		return k.mu.total
	}
	if len(k.mu.socks) < k.mu.want {
		k.findLocked()
	}
	for i := range k.mu.socks {
		sk := &k.mu.socks[i]
		if d, ok := socketDrops(sk.fd); ok {
			k.mu.total += uint64(d - sk.last)
			sk.last = d
		}
	}
	return k.mu.total
}

// findLocked adds the UDP sockets bound to the port not yet counted. A
// socket found late may have dropped before: its first reading counts.
func (k *kernelDrops) findLocked() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
next:
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		for _, sk := range k.mu.socks {
			if sk.fd == fd {
				continue next
			}
		}
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		port := 0
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			port = a.Port
		case *unix.SockaddrInet6:
			port = a.Port
		}
		if port == k.mu.port {
			k.mu.socks = append(k.mu.socks, dropSock{fd: fd})
		}
	}
}

// socketDrops reads SK_MEMINFO_DROPS of a socket.
func socketDrops(fd int) (uint32, bool) {
	var mi [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(mi))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, soMeminfo,
		uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 || l < (unix.SK_MEMINFO_DROPS+1)*4 {
		return 0, false
	}
	return mi[unix.SK_MEMINFO_DROPS], true
}
