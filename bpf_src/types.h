/* Types shared by the unwinder programs and the user-space side.
 *
 * harness/bpf_abi.py mirrors every struct and constant here; the host build
 * exports their sizes (host/shim.c) so a mismatch is caught when the shared
 * object is loaded, not by a wrong unwind.
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

#define MAX_FRAMES 512          /* frames in one trace */
#define FRAMES_PER_PROGRAM 16   /* native frames per program before a tail call */
#define DELTA_PAGE_BITS 16      /* stack deltas are indexed per 64 KiB of text */
#define DELTA_SEARCH_STEPS 17   /* log2(1 << DELTA_PAGE_BITS) + 1 */

#define MAX_PIDS 256
#define MAX_MAPPING_PREFIXES 65536
#define MAX_DELTA_PAGES 65536
#define MAX_STACK_DELTAS (1 << 22)
#define MAX_UNWIND_RULES 65536

/* Program indices in the prog array used for tail calls. */
#define PROG_UNWIND_NATIVE 0
#define NUM_PROGS 1

/* ---- Unwind rules (stack deltas) ---------------------------------------- */

/* How the canonical frame address (the caller's SP) is computed.
 * Values equal harness/unwind_data.py's CFA_* constants. */
#define CFA_INVALID 0 /* no usable rule here: error */
#define CFA_STOP 1    /* outermost frame: the return address is undefined */
#define CFA_SP 2      /* CFA = SP + cfa_param */
#define CFA_FP 3      /* CFA = FP + cfa_param */
#define CFA_PLT 4     /* CFA = SP + cfa_param + ((PC & 15) >= aux ? 8 : 0) */
#define CFA_SIGNAL 5  /* signal trampoline: registers come from the signal frame */

struct unwind_rule {
  u8 cfa_op;
  u8 aux;
  u16 pad;
  s32 cfa_param;
  s32 fp_offset; /* caller's FP at CFA + fp_offset; 0: FP not saved */
  s32 ra_offset; /* return address at CFA + ra_offset; 0: in the link register */
};

/* One entry of a module's sorted stack-delta table, within a delta page. */
struct stack_delta {
  u16 addr_low;  /* low DELTA_PAGE_BITS of the ELF virtual address */
  u16 rule;      /* index into the unwind_rules map */
};

struct delta_page_key {
  u64 file_id;
  u64 page;      /* ELF virtual address >> DELTA_PAGE_BITS */
};

/* Deltas of one page are stack_deltas[first .. first+count); the first one
 * always has addr_low == 0, so every address of the page has a rule. */
struct delta_page {
  u32 first;
  u32 count;
};

/* ---- Process memory map -------------------------------------------------- */

/* LPM-trie key: prefixlen counts the bits of pid and address that must match.
 * The address is stored big-endian so the trie compares its high bits first. */
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
};

/* ---- Trace records -------------------------------------------------------- */

#define FRAME_NATIVE 1
#define FRAME_ERROR 2

#define FRAME_FLAG_RETURN_ADDRESS 1 /* addr is a return address minus one */
#define FRAME_FLAG_SIGNAL 2         /* this frame was interrupted by a signal */

/* Error codes: harness/bpf_abi.py holds their names. */
#define ERR_NONE 0
#define ERR_PC_NOT_MAPPED 1      /* PC outside any known module */
#define ERR_NO_RULE 2            /* the stack delta says there is no usable rule */
#define ERR_READ_RA 3            /* return address unreadable */
#define ERR_READ_FP 4            /* saved frame pointer unreadable */
#define ERR_READ_SIGFRAME 5      /* signal frame unreadable */
#define ERR_NO_LINK_REGISTER 6   /* RA in the link register, but it is stale */
#define ERR_STACK_NOT_PROGRESSING 7
#define ERR_MAX_FRAMES 8
#define ERR_MAP_LOOKUP 9         /* a map lookup that must succeed did not */
#define ERR_ZERO_PC 10
#define ERR_TAIL_CALL 11

#define TRACE_STATUS_RUNNING 0
#define TRACE_STATUS_DONE 1      /* reached the outermost frame */
#define TRACE_STATUS_ABORTED 2   /* stopped on an error frame */

struct frame {
  u64 file_id;
  u64 addr;      /* ELF virtual address (return address - 1 for callers) */
  u64 cfa;       /* the CFA the unwinder computed for this frame (0 if none) */
  u16 error;     /* FRAME_ERROR: ERR_* */
  u8 kind;
  u8 flags;
  u32 pad;
};

struct trace {
  u32 pid;
  u32 tid;
  u32 num_frames;
  u32 status;
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
  u8 pad[5];
};

/* Per-CPU scratch: too large for the 512-byte BPF stack. */
struct unwind_scratch {
  struct unwind_state state;
  struct trace trace;
};

#endif /* UNWINDER_TYPES_H */
