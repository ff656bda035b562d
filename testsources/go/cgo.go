// cgo: C frames and Go frames in one thread, both ways.
//
// One goroutine calls C (c_wait_in_c), which blocks in nanosleep: libc and
// the C function on the thread's system stack, then asmcgocall switches back
// to the goroutine's stack (cgocall <- main._Cfunc_... <- main.callsC).
// Another calls C (c_calls_back), which calls back into Go (goCallback),
// which spins: the callback runs on the goroutine's stack again, reached
// through cgocallback. main prints "ready <pid>" and waits on a channel.
package main

/*
#include <time.h>

extern void goCallback(int);

__attribute__((noinline)) static void c_wait_inner(void) {
	struct timespec ts = {3600, 0};
	for (;;)
		nanosleep(&ts, 0);
}

__attribute__((noinline)) static void c_wait_in_c(void) { c_wait_inner(); }

__attribute__((noinline)) static void c_calls_back(int n) { goCallback(n + 1); }
*/
import "C"

import (
	"strconv"
	"syscall"
	"time"
)

var sink int

//export goCallback
func goCallback(n C.int) {
	for {
		sink += int(n) ^ (sink >> 3)
	}
}

//go:noinline
func callsC() { C.c_wait_in_c() }

//go:noinline
func callsBack() { C.c_calls_back(41) }

// ready tells the recorder the state is reached (without fmt and os, which would
// double the size of the binary every case bundles).
func ready() {
	syscall.Write(1, []byte("ready "+strconv.Itoa(syscall.Getpid())+"\n"))
}

func main() {
	go callsC()
	go callsBack()
	time.Sleep(300 * time.Millisecond)
	ready()
	<-make(chan int)
}
