/* Types shared by the unwinder programs and the user-space side.
 *
 * The harness reads every struct, enum and map from the build's debug info
 * (harness/bpf/debuginfo.py): a field or constant added here reaches Python
 * with no change there. Python names fields, not offsets; the contract it
 * relies on is in harness/bpf/abi.py and the README ("Bring your own
 * unwinder"). The CFA ops are produced by harness/unwind_data/, which is
 * checked against enum cfa_op when the unwinder is loaded.
 *
 * The target architecture is chosen by a macro, never by the compiler's own
 * target: the same file is compiled for TARGET_ARCH_X86_64 and
 * TARGET_ARCH_ARM64 on any host and with clang -target bpf.
 */
#ifndef UNWINDER_TYPES_H
#define UNWINDER_TYPES_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed int s32;
typedef signed long long s64;

#if defined(TARGET_ARCH_X86_64) == defined(TARGET_ARCH_ARM64)
#error "define exactly one of TARGET_ARCH_X86_64 and TARGET_ARCH_ARM64"
#endif

/* User registers as a perf_event program sees them (the kernel's
 * bpf_user_pt_regs_t for the target: struct pt_regs on x86_64,
 * struct user_pt_regs on arm64). */
#if defined(TARGET_ARCH_X86_64)
struct target_regs {
  u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
  u64 ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#else
struct target_regs {
  u64 regs[31]; /* x0..x30; x29 is the frame pointer, x30 the link register */
  u64 sp;
  u64 pc;
  u64 pstate;
};
#endif

/* Layout of struct bpf_perf_event_data: the program context. */
struct perf_event_ctx {
  struct target_regs regs;
  u64 sample_period;
  u64 addr;
};

/* ---- Unwinder limits ---------------------------------------------------- */

/* Constants shared with user space are enums, not macros, so that they are in
 * the debug info (DWARF) that user space can read them from. Struct fields
 * keep their fixed-width types: an enum's size is the compiler's choice, a
 * field's must not be. */

enum unwind_limits {
  MAX_FRAMES = 4096,        /* frames in one trace; a power of two (index mask) */
  FRAMES_PER_PROGRAM = 256, /* native frames per program (one bpf_loop) before a tail call */
  DELTA_PAGE_BITS = 16,     /* stack deltas are indexed per 64 KiB of text */
  DELTA_PAGE_MASK = (1 << DELTA_PAGE_BITS) - 1,
  /* A page holds at most one delta per address, 1 << DELTA_PAGE_BITS: one
   * halving per bit narrows it down to one entry; one step to spare. */
  DELTA_SEARCH_STEPS = DELTA_PAGE_BITS + 1,
};

enum map_sizes {
  /* unwind_scratch holds a trace of MAX_FRAMES frames per CPU (128 KiB: above
   * what a per-CPU map value may be), so it is an array indexed by CPU. */
  MAX_CPUS = 64,
  TRACE_RING_BYTES = 1 << 22, /* trace_events: room for 32 full traces */
  MAX_PIDS = 256,
  MAX_MAPPING_PREFIXES = 65536,
  MAX_DELTA_PAGES = 65536,
  MAX_STACK_DELTAS = 1 << 22,
  MAX_UNWIND_RULES = 1 << 18, /* every loaded module's rules, one slice each */
};

/* Program indices in the prog array used for tail calls. */
enum unwind_prog {
  PROG_UNWIND_NATIVE = 0,
  PROG_UNWIND_PYTHON = 1, /* bpf_src/python/unwind_python.h */
  NUM_PROGS = 2,
};

/* ---- Unwind rules (stack deltas) ---------------------------------------- */

/* How the canonical frame address (the caller's SP) is computed.
 * Values equal harness/unwind_data/model.py's CFA_* constants, which produce them. */
enum cfa_op {
  CFA_INVALID = 0, /* no usable rule here: error */
  CFA_STOP = 1,    /* outermost frame: the return address is undefined */
  CFA_SP = 2,      /* CFA = SP + cfa_param */
  CFA_FP = 3,      /* CFA = FP + cfa_param */
  CFA_PLT = 4,     /* CFA = SP + cfa_param + ((PC % PLT_ENTRY_SIZE) >= aux ? 8 : 0) */
  CFA_SIGNAL = 5,  /* signal trampoline: registers come from the signal frame */
  CFA_DEREF_FP = 6, /* realigned stack (GCC's DRAP): CFA = *(FP + cfa_param) */
  /* Go (bpf_src/go_stack.h, harness/unwind_data/go_deltas.py): */
  CFA_GO_STACK_SWITCH = 10, /* runtime.systemstack on g0: cannot be followed, error frame */
  CFA_GO_ASMCGOCALL = 11,   /* runtime.asmcgocall: back from the system stack to the goroutine's */
  CFA_GO_SAVED_SP = 12,     /* a Go vDSO call on g0: CFA = go_saved_sp + cfa_param (top frame) */
};

/* unwind_rule.aux of a CFA_DEREF_FP rule: the caller's FP is at FP + fp_offset
 * (a DRAP frame saves it relative to its own FP, not to the CFA). */
enum fp_rule {
  FP_AT_FP = 1,
};

/* x86_64 PLT entries are 16 bytes, and each pushes one word at the same
 * offset (lazy binding: jmp *GOT slot; push index; jmp PLT0). PC modulo the
 * entry size tells whether the push has run; unwind_rule.aux is the offset
 * right after it. */
enum plt_layout {
  PLT_ENTRY_SIZE = 16,
};

struct unwind_rule {
  u8 cfa_op;      /* enum cfa_op */
  u8 aux;         /* CFA_PLT: offset in a PLT entry from which one more word is pushed;
                  * CFA_DEREF_FP: enum fp_rule */
  u16 pad;
  s32 cfa_param;
  s32 fp_offset; /* caller's FP at CFA + fp_offset (FP + fp_offset with FP_AT_FP);
                  * 0: FP not saved */
  s32 ra_offset; /* return address at CFA + ra_offset; 0: in the link register */
};

/* One entry of a module's sorted stack-delta table, within a delta page. */
struct stack_delta {
  u16 addr_low;  /* low DELTA_PAGE_BITS of the ELF virtual address */
  u16 rule;      /* index into the module's slice of unwind_rules (delta_page.rule_base) */
};

struct delta_page_key {
  u64 file_id;
  u64 page;      /* ELF virtual address >> DELTA_PAGE_BITS */
};

/* Deltas of one page are stack_deltas[first .. first+count); the first one
 * always has addr_low == 0, so every address of the page has a rule. A
 * delta's rule is unwind_rules[rule_base + rule]: each module's rules are one
 * slice of the rules map, so the agent writes a module's deltas and rules as
 * they are cached, without renumbering them per process. */
struct delta_page {
  u32 first;
  u32 count;
  u32 rule_base;
};

/* ---- Process memory map -------------------------------------------------- */

/* LPM-trie key: prefixlen counts the bits of pid and address that must match.
 * The address is stored big-endian so the trie compares its high bits first. */
enum mapping_key_bits {
  MAPPING_PID_BITS = 8 * sizeof(u32),  /* mapping_key.pid: always matched */
  MAPPING_ADDR_BITS = 8 * sizeof(u64), /* mapping_key.addr_be */
};

struct mapping_key {
  u32 prefixlen;
  u32 pid;
  u64 addr_be;
};

struct mapping_info {
  u64 file_id;   /* 0: no module known for this range (anonymous memory) */
  u64 bias;      /* ELF virtual address = PC - bias */
};

/* Global settings written by the agent. */
struct unwinder_config {
  u64 ra_mask;   /* bits to keep in return addresses (arm64 pointer authentication) */
  /* offsetof(struct task_struct, thread.fsbase) (x86-64) or thread.uw.tp_value
   * (arm64): where bpf_get_current_task's task holds the user thread pointer;
   * 0: unknown (interpreters then find their thread state without it) */
  u64 task_thread_pointer;
};

/* ---- Interpreters --------------------------------------------------------- */

enum interpreter_limits {
  MAX_INTERPRETER_RANGES = 4,  /* address ranges of one module's interpreter loop */
  MAX_INTERPRETER_MODULES = 64,
  PYTHON_FRAMES_PER_PROGRAM = 512, /* CPython frames per program (one bpf_loop) */
  PYTHON_MAX_THREADS = 256,    /* thread states searched for the current thread */
  /* eval-loop calls one unwind_python handles (with the native frames between
   * them) before a tail call: <= 3.10 has one call per Python frame, and a trace
   * may take only 33 tail calls */
  PYTHON_CALLS_PER_PROGRAM = 8,
};

/* Where a module's interpreter loop is (ELF addresses [start, end)) and which
 * program walks the interpreter frames it runs; keyed by file id. */
struct interpreter_ranges {
  u64 start[MAX_INTERPRETER_RANGES];
  u64 end[MAX_INTERPRETER_RANGES];
  u32 count;
  u32 prog;      /* enum unwind_prog */
};

/* How CPython's frames chain (harness/interpreters/python/facts.py per version). */
enum python_frame_model {
  PYTHON_FRAME_OBJECTS = 1,      /* <= 3.10: PyFrameObject, one per eval-loop call */
  PYTHON_INTERPRETER_FRAMES = 2, /* 3.11+: _PyInterpreterFrame, several per call */
};

/* What ends the frames of one eval-loop call (PYTHON_INTERPRETER_FRAMES). */
enum python_entry_marker {
  PYTHON_ENTRY_IS_ENTRY = 1,   /* 3.11: frame_entry byte non-zero: the call's last frame */
  PYTHON_ENTRY_SHIM = 2,       /* 3.12+: frame_entry (owner) == owner_cstack: the call's
                                * entry shim, below its frames, not emitted */
};

/* One interpreter build's layout, keyed by the file id of the module holding
 * the eval loop. Offsets are in bytes; the agent takes them from the binary
 * (_Py_DebugOffsets, tp_members) or from the per-version facts. */
struct python_layout {
  u64 runtime;                   /* ELF address of _PyRuntime */
  u16 runtime_interpreters_head; /* _PyRuntimeState.interpreters.head */
  u16 interp_threads_head;       /* PyInterpreterState.tstate_head / threads.head */
  u16 tstate_next;               /* PyThreadState.next */
  u16 tstate_native_thread_id;   /* PyThreadState.native_thread_id (3.11+); 0: none */
  u16 tstate_thread_id;          /* PyThreadState.thread_id: pthread_self(), which glibc
                                  * on x86-64 makes the thread pointer (<= 3.10) */
  u16 tstate_frame;              /* .frame, .cframe or .current_frame */
  u16 cframe_current_frame;      /* _PyCFrame.current_frame (via_cframe) */
  u16 frame_previous;            /* f_back / previous */
  u16 frame_code;                /* f_code / f_executable */
  u16 frame_instr;               /* f_lasti (int) / prev_instr, instr_ptr (pointer) */
  u16 frame_entry;               /* is_entry / owner (a byte) */
  u16 code_instructions;         /* 3.11+: offsetof(PyCodeObject, co_code_adaptive) */
  u8 frame_model;                /* enum python_frame_model */
  u8 entry_marker;               /* enum python_entry_marker */
  u8 via_cframe;                 /* tstate_frame points to a _PyCFrame (3.11, 3.12) */
  u8 lasti_unit;                 /* bytes per f_lasti unit (3.10: 2) */
  u8 owner_cstack;               /* FRAME_OWNED_BY_CSTACK (3.12+) */
  u8 pad[3];
};

/* ---- Trace records -------------------------------------------------------- */

enum frame_kind {
  FRAME_NATIVE = 1,
  FRAME_ERROR = 2,
  /* A CPython frame: file_id is the interpreter module's, addr the code object's
   * address, cfa the byte offset of the instruction in the code (python/). */
  FRAME_PYTHON = 3,
};

enum frame_flags {
  FRAME_FLAG_RETURN_ADDRESS = 1, /* addr is a return address minus one */
  FRAME_FLAG_SIGNAL = 2,         /* this frame was interrupted by a signal */
};

/* Error codes of FRAME_ERROR frames. Each name, lowercased and without ERR_,
 * is the name user space prints (read from the debug info). */
enum unwind_error {
  ERR_NONE = 0,
  ERR_NATIVE_PC_NOT_MAPPED = 1,         /* PC outside any known module */
  ERR_NATIVE_NO_UNWIND_RULE = 2,        /* the stack delta says there is no usable rule */
  ERR_NATIVE_READ_RETURN_ADDRESS = 3,   /* return address unreadable */
  ERR_NATIVE_READ_FRAME_POINTER = 4,    /* saved frame pointer unreadable */
  ERR_NATIVE_READ_SIGNAL_FRAME = 5,     /* signal frame unreadable */
  ERR_NATIVE_STALE_LINK_REGISTER = 6,   /* RA in the link register, but it is stale */
  ERR_NATIVE_STACK_NOT_PROGRESSING = 7, /* the caller's SP is not above this frame's */
  ERR_NATIVE_MAX_FRAMES = 8,            /* trace full, or tail-call budget spent */
  ERR_NATIVE_MAP_LOOKUP = 9,            /* a map lookup that must succeed did not */
  ERR_NATIVE_ZERO_PC = 10,
  ERR_NATIVE_TAIL_CALL = 11,            /* the first tail call failed */
  ERR_NATIVE_DELTA_SEARCH_EXHAUSTED = 12, /* DELTA_SEARCH_STEPS ran out (page too large) */
  ERR_NATIVE_EMPTY_DELTA_PAGE = 13,     /* a delta page with no deltas */
  ERR_NATIVE_READ_CFA = 14,             /* CFA_DEREF_FP: the CFA's stack slot unreadable */
  /* CPython (bpf_src/python/unwind_python.h) */
  ERR_PYTHON_NO_LAYOUT = 40,            /* no python_layouts entry for the interpreter */
  ERR_PYTHON_READ_THREAD_STATE = 41,    /* runtime, interpreter or thread state unreadable */
  ERR_PYTHON_NO_THREAD_STATE = 42,      /* no thread state of this thread in the list */
  ERR_PYTHON_READ_FRAME = 43,           /* a frame of the chain unreadable */
  ERR_PYTHON_MAX_FRAMES = 44,           /* the trace filled up during a Python walk */
  ERR_PYTHON_NO_THREAD_POINTER = 45,    /* <= 3.10 needs the thread pointer; unknown */
  /* Go (bpf_src/go_stack.h) */
  ERR_GO_STACK_SWITCH = 60,     /* runtime.systemstack on g0: the goroutine's stack is unknown */
  ERR_GO_READ_CGO_FRAME = 61,   /* asmcgocall's saved g / stack depth unreadable */
  ERR_LIVE_READ_REGS = 80,              /* live: the thread's user registers unreadable */
};

enum trace_status {
  TRACE_STATUS_RUNNING = 0,
  TRACE_STATUS_DONE = 1,    /* reached the outermost frame */
  TRACE_STATUS_ABORTED = 2, /* stopped on an error frame */
  /* The PC is in an interpreter loop: leave the native loop for interp_prog
   * (never the status of a sent trace). */
  TRACE_STATUS_INTERPRETER = 3,
};

struct frame {
  u64 file_id;
  u64 addr;      /* ELF virtual address (return address - 1 for callers) */
  u64 cfa;       /* the CFA the unwinder computed for this frame (0 if none) */
  u16 error;     /* FRAME_ERROR: enum unwind_error */
  u8 kind;       /* enum frame_kind */
  u8 flags;      /* enum frame_flags */
  u32 pad;
};

struct trace {
  u32 pid;
  u32 tid;
  u32 num_frames;
  u32 status;    /* enum trace_status */
  struct frame frames[MAX_FRAMES];
};

/* Register state carried from one unwinder program to the next. */
struct unwind_state {
  u64 pc;
  u64 sp;
  u64 fp;
  u64 lr;
  u8 lr_valid;       /* lr holds the current frame's return address */
  u8 return_address; /* pc is a return address: look up pc - 1 */
  u8 signal_frame;   /* the current frame was interrupted by a signal */
  u8 interp_done;    /* the interpreter program has run for the current frame */
  u8 python_started; /* python_frame has been found from the thread state */
  u8 interp_prog;    /* enum unwind_prog of the interpreter-loop frame at pc */
  u8 pad[2];
  u64 interp_file_id; /* module and load bias of that frame, for interp_prog */
  u64 interp_bias;
  u64 python_frame;   /* the next CPython frame to emit (0: none left) */
  u64 go_saved_sp;   /* the top frame's register where Go's vDSO calls keep the old SP
                      * (r12 / x20; bpf_src/go_stack.h); 0 once unknown */
};

/* Per-CPU scratch: too large for the 512-byte BPF stack. */
struct unwind_scratch {
  struct unwind_state state;
  struct trace trace;
};

#endif /* UNWINDER_TYPES_H */
