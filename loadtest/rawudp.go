package loadtest

import (
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/presenced/presenced/server/wire"
)

// rawBatch is the number of datagrams one recvmmsg/sendmmsg moves.
const rawBatch = 64

// rawUDP is a do-nothing receiver on raw sockets: one SO_REUSEPORT socket
// and goroutine per CPU, reading up to 64 datagrams per recvmmsg(2) (MSG_WAITFORONE: what is there once one is) and
// answering them with one sendmmsg(2). It shows what the kernel's UDP path
// costs without any event-loop library.
type rawUDP struct {
	nullCounters
	fds  []int
	stop atomic.Bool
	wg   sync.WaitGroup
}

// startRawUDP starts the receiver on a free loopback port.
func startRawUDP() (addr string, stop func(), err error) {
	port, err := freeUDPPort()
	if err != nil {
		return "", nil, err
	}
	_, stop, err = startRawUDPAt(&unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
	return "127.0.0.1:" + strconv.Itoa(port), stop, err
}

// startRawUDPAt starts the receiver on sa.
func startRawUDPAt(sa *unix.SockaddrInet4) (*rawUDP, func(), error) {
	r := &rawUDP{}
	for range runtime.GOMAXPROCS(0) {
		fd, err := rawSocket(sa)
		if err != nil {
			r.close()
			return nil, nil, err
		}
		r.fds = append(r.fds, fd)
	}
	for _, fd := range r.fds {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.loop(fd)
		}()
	}
	return r, r.close, nil
}

func rawSocket(sa *unix.SockaddrInet4) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("cannot open raw-udp socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("cannot %s raw-udp socket: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("set SO_REUSEPORT on", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	// A receive timeout lets the loop see stop; the socket stays blocking.
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("set SO_RCVTIMEO on", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	return fd, nil
}

func (r *rawUDP) close() {
	r.stop.Store(true)
	r.wg.Wait()
	for _, fd := range r.fds {
		_ = unix.Close(fd)
	}
	r.fds = nil
}

type rawBuffers struct {
	bufs  [rawBatch][wire.MaxDatagram]byte
	names [rawBatch]unix.RawSockaddrInet6 // large enough for either family
	iovs  [rawBatch]unix.Iovec
	in    [rawBatch]unix.Mmsghdr
	out   [rawBatch]unix.Mmsghdr
	oiovs [rawBatch]unix.Iovec
}

// loop serves one socket until stop. All buffers are allocated once.
func (r *rawUDP) loop(fd int) {
	// On the heap, so the pointers handed to the kernel never move.
	b := new(rawBuffers)
	bufs, names, iovs, in, out, oiovs := &b.bufs, &b.names, &b.iovs, &b.in, &b.out, &b.oiovs
	for i := range rawBatch {
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(wire.MaxDatagram)
	}
	for !r.stop.Load() {
		for i := range rawBatch {
			in[i].Hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
			in[i].Hdr.Namelen = uint32(unsafe.Sizeof(names[i]))
			in[i].Hdr.Iov = &iovs[i]
			in[i].Hdr.Iovlen = 1
			in[i].Len = 0
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&in[0])), rawBatch, unix.MSG_WAITFORONE, 0, 0)
		if errno != 0 || n == 0 {
			continue // EAGAIN on timeout, EINTR
		}
		r.in.Add(int64(n))
		m := 0
		for i := range int(n) {
			size := nullReply(bufs[i][:in[i].Len])
			if size == 0 {
				continue
			}
			oiovs[m].Base = &bufs[i][0]
			oiovs[m].SetLen(size)
			out[m].Hdr.Name = in[i].Hdr.Name
			out[m].Hdr.Namelen = in[i].Hdr.Namelen
			out[m].Hdr.Iov = &oiovs[m]
			out[m].Hdr.Iovlen = 1
			m++
		}
		sent := 0
		for sent < m {
			k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&out[sent])), uintptr(m-sent), 0, 0, 0)
			if errno != 0 || k == 0 {
				break // a full send buffer drops acks: the generator counts them lost
			}
			sent += int(k)
		}
		r.out.Add(int64(sent))
	}
}
