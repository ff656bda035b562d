/* DEBUG_PRINT for the kernel build: bpf_trace_printk, read with
 * `cat /sys/kernel/debug/tracing/trace_pipe`.
 *
 * Without -DUNWINDER_DEBUG the macro is empty, so the verified programs and
 * their instruction counts do not grow by default. With it, each format is a
 * static const array in .rodata rather than a copy on the 512-byte stack.
 *
 * Only the kernel build includes this file, as only the host build includes
 * harness_host.h (which has the host's DEBUG_PRINT). The UNWINDER_DEBUG switch
 * is the kernel build's alone, so it lives here: the top-level files keep to
 * the target-architecture and __bpf__ conditionals
 * (tests/test_bpf_verify.py, test_one_source_no_host_only_conditionals).
 */
#ifndef UNWINDER_KERNEL_DEBUG_PRINT_H
#define UNWINDER_KERNEL_DEBUG_PRINT_H

#ifdef UNWINDER_DEBUG
#define DEBUG_PRINT(fmt, ...)                                                     \
  do {                                                                            \
    static const char debug_fmt_[] = fmt "\n";                                    \
    bpf_trace_printk(debug_fmt_, sizeof(debug_fmt_), ##__VA_ARGS__);              \
  } while (0)
#else
#define DEBUG_PRINT(fmt, ...) do { } while (0)
#endif

#endif /* UNWINDER_KERNEL_DEBUG_PRINT_H */
