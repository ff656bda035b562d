/* The harness's host build of a BPF unwinder: what replaces the kernel.
 *
 * An unwinder compiled with clang -target bpf calls numbered kernel helpers.
 * Compiled for the host (no __bpf__), it includes this header instead of its
 * helper definitions: each helper is then a function pointer with the
 * helper's name and signature, which the harness (harness/bpf/bridge.py)
 * points at Python implementations through ctypes before a program runs.
 * bpf_tail_call and bpf_loop are implemented here in C: the one leaves the
 * calling program for good, which a Python callback cannot do; the other only
 * calls the unwinder's own callback.
 *
 * SEC() places programs and maps in named ELF sections as in the BPF build,
 * so the harness finds them in the shared object the way libbpf finds them in
 * a BPF object (harness/bpf/debuginfo.py).
 *
 * Self-contained (no libc header, no type of the unwinder), so any unwinder
 * can use it: the build puts harness/bpf/host/ on the include path.
 */
#ifndef HARNESS_HOST_H
#define HARNESS_HOST_H

#define SEC(name) __attribute__((section(name), used))

extern void *(*bpf_map_lookup_elem)(void *map, const void *key);
extern long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   unsigned long long flags);
extern unsigned long long (*bpf_ktime_get_ns)(void);
extern unsigned int (*bpf_get_smp_processor_id)(void);
extern unsigned long long (*bpf_get_current_pid_tgid)(void);
extern unsigned long long (*bpf_get_current_task)(void);
extern long (*bpf_probe_read_kernel)(void *dst, unsigned int size, const void *unsafe_ptr);
extern long (*bpf_perf_event_output)(void *ctx, void *map, unsigned long long flags, void *data,
                                     unsigned long long size);
extern long (*bpf_ringbuf_output)(void *ringbuf, void *data, unsigned long long size,
                                  unsigned long long flags);
extern long (*bpf_probe_read_user)(void *dst, unsigned int size, const void *unsafe_ptr);

long bpf_tail_call(void *ctx, void *prog_array_map, unsigned int index);

/* bpf_loop runs in C too: the callback is the unwinder's own code. */
long bpf_loop(unsigned int nr_loops, void *callback_fn, void *callback_ctx,
              unsigned long long flags);

/* DEBUG_PRINT(fmt, ...) is always compiled in on the host; whether it prints
 * is decided at run time by harness_log. */
#define DEBUG_PRINT(fmt, ...) harness_debug_print(fmt, ##__VA_ARGS__)

/* Set by Python (ctypes: CFUNCTYPE(None, c_char_p), stored through
 * c_void_p.in_dll(lib, "harness_log")): receives each formatted message,
 * NUL-terminated, without a trailing newline, valid only during the call.
 * NULL, the default, turns DEBUG_PRINT off. */
extern void (*harness_log)(const char *message);

/* Formats like bpf_trace_printk would and hands the text to harness_log;
 * returns at once, without formatting, while harness_log is NULL. gcc checks
 * every DEBUG_PRINT format against its arguments. */
void harness_debug_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* HARNESS_HOST_H */
