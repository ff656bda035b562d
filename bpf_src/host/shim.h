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

#endif /* UNWINDER_HOST_SHIM_H */
