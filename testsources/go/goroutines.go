// goroutines: Go threads in the states a profiler samples most.
//
// main starts goroutines that block on a channel, in time.Sleep, in a raw
// read(2) on a silent pipe (a real blocking system call: the goroutine keeps
// its thread) and one that spins in Go code (running on a thread); then it
// prints "ready <pid>" and blocks on a channel itself. Threads: the one in the
// system call, the spinning one, idle Ms parked in futex on their g0 stacks
// (schedule <- park_m <- mcall, or <- mstart), and sysmon.
package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

var sink int

//go:noinline
func spinInner(n int) int {
	for i := 0; i < n; i++ {
		sink += i ^ (sink >> 3)
	}
	return sink
}

//go:noinline
func spin() {
	for {
		spinInner(1 << 20)
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

func main() {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	ch := make(chan int)
	go receiver(ch)
	go sleeper()
	go blockedInRead(fds[0])
	go spin()
	time.Sleep(300 * time.Millisecond) // every goroutine in its state
	fmt.Printf("ready %d\n", os.Getpid())
	receiver(ch)
}
