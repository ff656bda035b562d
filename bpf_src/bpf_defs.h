/* BPF definitions for both targets.
 *
 * Compiled with clang -target bpf, helpers are the kernel's numbered helper
 * calls and SEC() places programs and maps in the sections libbpf reads.
 * Compiled for the host, host/shim.h turns the same names into function
 * pointers that the Python harness fills in; nothing else differs.
 */
#ifndef UNWINDER_BPF_DEFS_H
#define UNWINDER_BPF_DEFS_H

#include "types.h"

/* Map types and flags (values from the kernel's uapi bpf.h). */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PROG_ARRAY 3
#define BPF_MAP_TYPE_PERF_EVENT_ARRAY 4
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_CURRENT_CPU 0xffffffffULL

/* BTF-style map definitions, as libbpf expects them. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

/* Guarded as in libbpf's bpf_helpers.h. The host debug build (harness/build.py
 * DEBUG_FLAGS) passes -D__always_inline=inline so that every step of the
 * unwinder stays a function gdb can step into and break on. The BPF build and
 * the optimised host build keep forcing inlining, as before. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#if defined(__bpf__)

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   u64 flags) = (void *)2;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
static long (*bpf_tail_call)(void *ctx, void *prog_array_map, u32 index) = (void *)12;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*bpf_perf_event_output)(void *ctx, void *map, u64 flags, void *data,
                                     u64 size) = (void *)25;
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *unsafe_ptr) = (void *)112;

#else

#include "host/shim.h"

#endif

#endif /* UNWINDER_BPF_DEFS_H */
