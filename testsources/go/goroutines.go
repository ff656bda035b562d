// goroutines: Go threads in the states a profiler samples most.
//
// main starts goroutines that block on a channel, in time.Sleep, in a raw
// read(2) on a silent pipe (a real blocking system call: the goroutine keeps
// its thread) and one that spins in Go code (running on a thread); then it
// prints "ready <pid>" and blocks on a channel itself. Threads: the one in the
// system call, the spinning one, idle Ms parked in futex on their g0 stacks
// (schedule <- park_m <- mcall, or <- mstart), and sysmon. Two more spin
// where Go switches stacks: one reads the clock (time.Now: on g0 in the
// vDSO), one takes its own traceback (runtime.Callers: gentraceback on g0
// through runtime.systemstack); GOMAXPROCS 4 gives every spinner a thread.
//
// Go's runtime catches SIGABRT (and prints its own traceback), so before it
// is ready the program gives SIGABRT back its default action: record-qemu
// freezes a program with it and needs the guest core it leaves.
package main

import (
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// struct sigaction as rt_sigaction(2) takes it on linux/amd64 and linux/arm64.
type sigaction struct {
	handler, flags, restorer, mask uintptr
}

func defaultAbort() {
	var dfl sigaction // SIG_DFL, no flags
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGABRT),
		uintptr(unsafe.Pointer(&dfl)), 0, unsafe.Sizeof(dfl.mask), 0, 0)
	if errno != 0 {
		panic(errno)
	}
}

var sink int

//go:noinline
func spinInner(n int) int {
	for i := 0; i < n; i++ {
		sink += i ^ (sink >> 3)
	}
	return sink
}

// spinStep has a frame: record-qemu -site stops arm64 cases in its prologue and
// epilogue (testsources/record_cases.py).
//
//go:noinline
func spinStep(n int) int {
	return spinInner(n) + 1
}

//go:noinline
func spin() {
	for {
		spinStep(1 << 20)
	}
}

var clockSink int64

//go:noinline
func readClock() {
	for {
		clockSink += time.Now().UnixNano() & 1
	}
}

//go:noinline
func ownTraceback() {
	pcs := make([]uintptr, 32)
	for {
		runtime.Callers(0, pcs)
	}
}

//go:noinline
func blockedInRead(fd int) {
	buf := make([]byte, 1)
	syscall.Read(fd, buf) // nobody ever writes
}

//go:noinline
func sleeper() { time.Sleep(time.Hour) }

//go:noinline
func receiver(ch chan int) { <-ch }

// ready tells the recorder the state is reached (without fmt and os, which would
// double the size of the binary every case bundles).
func ready() {
	syscall.Write(1, []byte("ready "+strconv.Itoa(syscall.Getpid())+"\n"))
}

func main() {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	runtime.GOMAXPROCS(4)
	ch := make(chan int)
	go receiver(ch)
	go sleeper()
	go blockedInRead(fds[0])
	go spin()
	go readClock()
	go ownTraceback()
	defaultAbort()
	time.Sleep(300 * time.Millisecond) // every goroutine in its state
	ready()
	receiver(ch)
}
