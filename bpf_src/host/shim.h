/* Host build of the BPF programs.
 *
 * Each helper is a function pointer with the helper's name and signature; the
 * harness (harness/bridge.py) points them at Python implementations through
 * ctypes before running a program. bpf_tail_call is the one helper the shim
 * implements itself: it needs to leave the calling program for good, which
 * a Python callback cannot do (see shim.c).
 */
#ifndef UNWINDER_HOST_SHIM_H
#define UNWINDER_HOST_SHIM_H

#define SEC(name)

extern void *(*bpf_map_lookup_elem)(void *map, const void *key);
extern long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags);
extern u64 (*bpf_ktime_get_ns)(void);
extern u32 (*bpf_get_smp_processor_id)(void);
extern u64 (*bpf_get_current_pid_tgid)(void);
extern long (*bpf_perf_event_output)(void *ctx, void *map, u64 flags, void *data, u64 size);
extern long (*bpf_probe_read_user)(void *dst, u32 size, const void *unsafe_ptr);

long bpf_tail_call(void *ctx, void *prog_array_map, u32 index);

/* DEBUG_PRINT (see bpf_defs.h) is always compiled in on the host; whether it
 * prints is decided at run time by harness_log. */
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

#endif /* UNWINDER_HOST_SHIM_H */
