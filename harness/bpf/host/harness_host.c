/* Host-side glue of any unwinder: helper pointers, tail calls, debug prints.
 *
 * Tail calls: a BPF tail call replaces the running program and never returns.
 * harness_run_program() calls the entry program under setjmp; bpf_tail_call()
 * asks Python for the target of the prog-array slot and longjmps back, and
 * the loop starts that program with the same context. Only C frames lie
 * between setjmp and longjmp: every Python callback has returned by then.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>

#include "harness_host.h"

#define MAX_TAIL_CALLS 33 /* the kernel's MAX_TAIL_CALL_CNT */

typedef int (*bpf_prog_fn)(void *ctx);

/* Array lookups are index arithmetic over memory that Python owns and
 * registers here (harness_set_array), done in C so that the unwinder's hottest
 * helper call (a binary search over an array map takes several per frame)
 * does not cross into Python. Bounds are checked as the kernel checks them.
 * Every other map goes to Python's harness_map_lookup_slow. */
#define MAX_DIRECT_ARRAYS 64

struct direct_array {
  const void *map;
  char *base;
  unsigned long long value_size;
  unsigned int max_entries;
};

static struct direct_array direct_arrays[MAX_DIRECT_ARRAYS];
static int num_direct_arrays;

void *(*harness_map_lookup_slow)(void *map, const void *key);

static void *harness_map_lookup(void *map, const void *key)
{
  for (int i = 0; i < num_direct_arrays; i++) {
    const struct direct_array *a = &direct_arrays[i];
    if (a->map == map) {
      unsigned int index = *(const unsigned int *)key;
      return index < a->max_entries ? a->base + index * a->value_size : NULL;
    }
  }
  return harness_map_lookup_slow ? harness_map_lookup_slow(map, key) : NULL;
}

/* Register (or move) an array map's values; returns -1 when the table is full. */
int harness_set_array(const void *map, void *base, unsigned long long value_size,
                      unsigned int max_entries)
{
  int i = 0;
  while (i < num_direct_arrays && direct_arrays[i].map != map)
    i++;
  if (i == MAX_DIRECT_ARRAYS)
    return -1;
  direct_arrays[i] = (struct direct_array){map, base, value_size, max_entries};
  if (i == num_direct_arrays)
    num_direct_arrays++;
  return 0;
}

void *(*bpf_map_lookup_elem)(void *map, const void *key) = harness_map_lookup;
long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                            unsigned long long flags);
unsigned long long (*bpf_ktime_get_ns)(void);
unsigned int (*bpf_get_smp_processor_id)(void);
unsigned long long (*bpf_get_current_pid_tgid)(void);
unsigned long long (*bpf_get_current_task)(void);
long (*bpf_probe_read_kernel)(void *dst, unsigned int size, const void *unsafe_ptr);
long (*bpf_perf_event_output)(void *ctx, void *map, unsigned long long flags, void *data,
                              unsigned long long size);
long (*bpf_ringbuf_output)(void *ringbuf, void *data, unsigned long long size,
                           unsigned long long flags);
long (*bpf_probe_read_user)(void *dst, unsigned int size, const void *unsafe_ptr);

/* Set by Python: returns the program stored in a prog-array slot, or NULL. */
void *(*harness_prog_array_lookup)(void *map, unsigned int index);

static jmp_buf *tail_call_target;
static bpf_prog_fn next_prog;
static int tail_calls;

long bpf_tail_call(void *ctx, void *prog_array_map, unsigned int index)
{
  (void)ctx;
  if (!tail_call_target || !harness_prog_array_lookup || tail_calls >= MAX_TAIL_CALLS)
    return -1;
  void *prog = harness_prog_array_lookup(prog_array_map, index);
  if (!prog)
    return -1; /* as in the kernel: an empty slot falls through */
  tail_calls++;
  next_prog = (bpf_prog_fn)prog;
  longjmp(*tail_call_target, 1);
}

#define MAX_LOOPS (1U << 23) /* the kernel's BPF_MAX_LOOPS */

long bpf_loop(unsigned int nr_loops, void *callback_fn, void *callback_ctx,
              unsigned long long flags)
{
  long (*callback)(unsigned long long index, void *ctx) = callback_fn;
  if (flags || nr_loops > MAX_LOOPS || !callback)
    return -22; /* -EINVAL, as the kernel */
  unsigned int i = 0;
  while (i < nr_loops) {
    long ret = callback(i, callback_ctx);
    i++;
    if (ret)
      break;
  }
  return i;
}

/* Run one program and whatever it tail-calls; returns the last program's
 * return value. *tail_calls_out receives the number of tail calls taken. */
int harness_run_program(bpf_prog_fn prog, void *ctx, int *tail_calls_out)
{
  jmp_buf env;
  volatile bpf_prog_fn current = prog;
  int ret;

  tail_calls = 0;
  tail_call_target = &env;
  if (setjmp(env))
    current = next_prog;
  ret = current(ctx);
  tail_call_target = NULL;
  if (tail_calls_out)
    *tail_calls_out = tail_calls;
  return ret;
}

void (*harness_log)(const char *message);

/* Long enough for any printk-style line of the unwinder; longer ones are cut
 * (vsnprintf always terminates the buffer). */
#define DEBUG_MESSAGE_SIZE 256

void harness_debug_print(const char *fmt, ...)
{
  void (*log)(const char *message) = harness_log;
  if (!log)
    return;
  char message[DEBUG_MESSAGE_SIZE];
  va_list args;
  va_start(args, fmt);
  vsnprintf(message, sizeof(message), fmt, args);
  va_end(args);
  log(message);
}
