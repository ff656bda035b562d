#!/usr/bin/env bash
# Build the test programs into OUTDIR (default: testsources/build/amd64).
#
#   testsources/build.sh [OUTDIR]
#
# Every binary carries -g so gdb can name frames.  A target is rebuilt only if
# it is missing or older than its source or this script; each one is written
# to a temporary name and renamed, so concurrent runs and interrupted builds
# never leave a half-written binary behind.  Any compiler error stops the
# script with a non-zero exit status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
outdir="${1:-$here/build/amd64}"
CC="${CC:-gcc}"
CXX="${CXX:-g++}"
mkdir -p "$outdir"

# build OUTPUT COMPILER SOURCE FLAGS...
build() {
    local out="$outdir/$1" compiler="$2" src="$here/$3"
    shift 3
    if [[ -e "$out" && "$out" -nt "$src" && "$out" -nt "${BASH_SOURCE[0]}" ]]; then
        return 0
    fi
    local tmp="$out.tmp.$$"
    if ! "$compiler" -g -Wall -Wextra "$@" -o "$tmp" "$src"; then
        rm -f "$tmp"
        echo "build.sh: FAILED to build $out from $src" >&2
        exit 1
    fi
    mv -f "$tmp" "$out"
    echo "built $out"
}

for opt in O0 O2 O3; do
    build "chain.$opt.fp"   "$CC" chain.c "-$opt" -fno-omit-frame-pointer
    build "chain.$opt.nofp" "$CC" chain.c "-$opt" -fomit-frame-pointer
done
# No .eh_frame for the program's own functions: unwinders must chain frame pointers / frame records.
build chain.O2.nocfi "$CC" chain.c -O2 -fno-omit-frame-pointer -fno-asynchronous-unwind-tables -fno-unwind-tables
build threads  "$CC"  threads.c  -O2 -pthread
build blocked  "$CC"  blocked.c  -O2 -pthread
build recurse  "$CC"  recurse.c  -O1
build cxx      "$CXX" cxx.cpp    -O2 -std=c++17 -pthread
build static   "$CC"  static.c   -O2 -static
build sigframe "$CC"  sigframe.c -O2
build sites    "$CC"  sites.c    -O2
build vdso     "$CC"  vdso.c     -O2 -pthread
build deep     "$CC"  deep.c     -O1
build vfork    "$CC"  vfork.c    -O2
build garbage  "$CC"  garbage.c  -O2 -fno-omit-frame-pointer
build garbage.block "$CC" garbage.c -O2 -fno-omit-frame-pointer -DBLOCK
build deep.limit "$CC" deep.c    -O1 -DDEPTH=6000
build sighandler "$CC" sighandler.c -O2 -pthread
# x86_64 only: arm64's ABI keeps the stack 16-byte aligned, so GCC never needs a DRAP there.
if "$CC" -dumpmachine | grep -q '^x86_64'; then
    build realign "$CC" realign.c -O2 -mincoming-stack-boundary=3
    # -g0 after build's -g: no .debug_frame either, so only frame pointers unwind it
    build untouched "$CC" untouched.c -O2 -pthread -g0 -fno-asynchronous-unwind-tables -fno-unwind-tables
fi
# musl is built without unwind tables: its libc is code without CFI (x86_64 only here).
if "$CC" -dumpmachine | grep -q '^x86_64'; then
    if command -v musl-gcc >/dev/null; then
        build threads.musl        musl-gcc threads.c    -O2 -pthread
        build threads.musl.static musl-gcc threads.c    -O2 -pthread -static
        build sighandler.musl     musl-gcc sighandler.c -O2 -pthread
    else
        echo "build.sh: no musl-gcc: skipping the musl programs (apt-get install musl-tools)" >&2
    fi
fi

# Go programs (testsources/go/), with the installed Go (Debian: golang-go) if there is
# one. -trimpath keeps the builds reproducible (the same bytes, the same blob id).
# The target follows $CC: an arm64 cross-build needs no C toolchain (CGO_ENABLED=0),
# so the cgo program is built for amd64 only.
if command -v go >/dev/null; then
    case "$("$CC" -dumpmachine)" in
        aarch64*) goarch=arm64 ;;
        x86_64*) goarch=amd64 ;;
        *) goarch="" ;;
    esac
    # gobuild OUTPUT SOURCE CGO_ENABLED GO-BUILD-FLAGS...
    gobuild() {
        local out src="$here/go/$2" cgo="$3"
        out="$(realpath "$outdir")/$1"
        shift 3
        if [[ -e "$out" && "$out" -nt "$src" && "$out" -nt "${BASH_SOURCE[0]}" ]]; then
            return 0
        fi
        local tmp="$out.tmp.$$"
        if ! (cd "$here/go" && CGO_ENABLED="$cgo" GOARCH="$goarch" GOFLAGS=-trimpath \
                go build "$@" -o "$tmp" "$src"); then
            rm -f "$tmp"
            echo "build.sh: FAILED to build $out from $src" >&2
            exit 1
        fi
        mv -f "$tmp" "$out"
        echo "built $out"
    }
    if [[ -n "$goarch" ]]; then
        gobuild go.goroutines          goroutines.go 0
        gobuild go.goroutines.stripped goroutines.go 0 -ldflags=-s\ -w
        if [[ "$goarch" == amd64 ]]; then
            gobuild go.cgo cgo.go 1
        fi
    fi
fi
