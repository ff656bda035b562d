/* BPF definitions for both targets.
 *
 * Compiled with clang -target bpf, helpers are the kernel's numbered helper
 * calls and SEC() places programs and maps in the sections libbpf reads.
 * Compiled for the host, the harness's harness_host.h (harness/bpf/host/, on
 * the include path of the host build) turns the same names into function
 * pointers that the Python harness fills in; nothing else differs.
 */
#ifndef UNWINDER_BPF_DEFS_H
#define UNWINDER_BPF_DEFS_H

#include "types.h"

#define NULL ((void *)0) /* no libc here */

/* Values from the kernel's include/uapi/linux/bpf.h; only what is used here. */
enum bpf_map_type {
  BPF_MAP_TYPE_HASH = 1,
  BPF_MAP_TYPE_ARRAY = 2,
  BPF_MAP_TYPE_PROG_ARRAY = 3,
  BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
  BPF_MAP_TYPE_PERCPU_ARRAY = 6,
  BPF_MAP_TYPE_LPM_TRIE = 11,
  BPF_MAP_TYPE_RINGBUF = 27,
};

/* Helper ids: their positions in the uapi's __BPF_FUNC_MAPPER list. */
enum bpf_func_id {
  BPF_FUNC_map_lookup_elem = 1,
  BPF_FUNC_map_update_elem = 2,
  BPF_FUNC_ktime_get_ns = 5,
  BPF_FUNC_trace_printk = 6,
  BPF_FUNC_get_smp_processor_id = 8,
  BPF_FUNC_tail_call = 12,
  BPF_FUNC_get_current_pid_tgid = 14,
  BPF_FUNC_perf_event_output = 25,
  BPF_FUNC_get_current_task = 35,
  BPF_FUNC_probe_read_user = 112,
  BPF_FUNC_probe_read_kernel = 113,
  BPF_FUNC_ringbuf_output = 130,
  BPF_FUNC_get_current_task_btf = 158, /* kernel/live_entry.h only */
  BPF_FUNC_task_pt_regs = 175,         /* kernel/live_entry.h only */
  BPF_FUNC_loop = 181,
};

/* Flags stay macros: BPF_F_CURRENT_CPU does not fit the int that a C11 enum
 * constant must be. */
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_CURRENT_CPU 0xffffffffULL

/* BTF-style map definitions, as libbpf expects them. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

/* Guarded as in libbpf's bpf_helpers.h. The host debug build (harness/bpf/build.py
 * DEBUG_FLAGS) passes -D__always_inline=inline so that every step of the
 * unwinder stays a function gdb can step into and break on. The BPF build and
 * the optimised host build keep forcing inlining, as before. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* DEBUG_PRINT(fmt, ...): a printk-style message (%d %u %ld %llu %llx, at
 * most three arguments, no trailing newline). In the kernel build it is
 * bpf_trace_printk, compiled in only with -DUNWINDER_DEBUG; in the host build
 * it goes to the harness's log whenever that is set. */

#if defined(__bpf__)

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
    (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   u64 flags) = (void *)BPF_FUNC_map_update_elem;
static u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static long (*bpf_trace_printk)(const char *fmt, u32 fmt_size, ...) =
    (void *)BPF_FUNC_trace_printk;
static u32 (*bpf_get_smp_processor_id)(void) = (void *)BPF_FUNC_get_smp_processor_id;
static long (*bpf_tail_call)(void *ctx, void *prog_array_map, u32 index) =
    (void *)BPF_FUNC_tail_call;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;
static u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_kernel;
static long (*bpf_perf_event_output)(void *ctx, void *map, u64 flags, void *data,
                                     u64 size) = (void *)BPF_FUNC_perf_event_output;
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, u64 size, u64 flags) =
    (void *)BPF_FUNC_ringbuf_output;
static long (*bpf_loop)(u32 nr_loops, void *callback_fn, void *callback_ctx, u64 flags) =
    (void *)BPF_FUNC_loop;
/* coredump live's entry program (kernel/live_entry.h), which the host build has not. */
struct task_struct;
static struct task_struct *(*bpf_get_current_task_btf)(void) =
    (void *)BPF_FUNC_get_current_task_btf;
static const void *(*bpf_task_pt_regs)(struct task_struct *task) =
    (void *)BPF_FUNC_task_pt_regs;

#include "kernel/debug_print.h"

#else

#include "harness_host.h"

#endif

#endif /* UNWINDER_BPF_DEFS_H */
