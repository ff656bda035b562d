/* Maps of the native unwinder. The user-space agent (harness/bpf/agent.py on the
 * host, a profiler's agent in production) fills the first five; the rest are
 * the unwinder's own plumbing. */
#ifndef UNWINDER_MAPS_H
#define UNWINDER_MAPS_H

#include "bpf_defs.h"

/* (pid, address) -> module and load bias, one trie entry per aligned prefix. */
struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __type(key, struct mapping_key);
  __type(value, struct mapping_info);
  __uint(max_entries, MAX_MAPPING_PREFIXES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
} pid_mappings SEC(".maps");

/* (file id, 64 KiB page of ELF addresses) -> slice of stack_deltas. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __type(key, struct delta_page_key);
  __type(value, struct delta_page);
  __uint(max_entries, MAX_DELTA_PAGES);
} delta_pages SEC(".maps");

/* All modules' stack deltas, each page's slice sorted by address. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __type(key, u32);
  __type(value, struct stack_delta);
  __uint(max_entries, MAX_STACK_DELTAS);
} stack_deltas SEC(".maps");

/* Distinct unwind rules, shared by all modules. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __type(key, u32);
  __type(value, struct unwind_rule);
  __uint(max_entries, MAX_UNWIND_RULES);
} unwind_rules SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __type(key, u32);
  __type(value, struct unwinder_config);
  __uint(max_entries, 1);
} unwinder_config SEC(".maps");

/* Unwind state and trace under construction, one per CPU. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __type(key, u32);
  __type(value, struct unwind_scratch);
  __uint(max_entries, MAX_CPUS);
} unwind_scratch SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
  __uint(key_size, sizeof(u32));
  __uint(value_size, sizeof(u32));
  __uint(max_entries, NUM_PROGS);
} unwind_progs SEC(".maps");

/* Finished traces go to user space through this ring buffer: a record is as
 * long as the trace (a perf event record cannot exceed 64 KiB). */
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, TRACE_RING_BYTES);
} trace_events SEC(".maps");

/* file id -> the module's interpreter-loop ranges and the program for them. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __type(key, u64);
  __type(value, struct interpreter_ranges);
  __uint(max_entries, MAX_INTERPRETER_MODULES);
} interpreter_ranges SEC(".maps");

/* file id of a CPython eval-loop module -> its layout (python/unwind_python.h). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __type(key, u64);
  __type(value, struct python_layout);
  __uint(max_entries, MAX_INTERPRETER_MODULES);
} python_layouts SEC(".maps");

#endif /* UNWINDER_MAPS_H */
