/* bench/tracepoints.py's reference: a program written for ONE tracepoint
 * (syscalls:sys_enter_getppid), emitting the same header and raw record as the generic
 * program (bpf/tracepoint.bpf.c) but with its size, slot and layout fixed at compile time. */
#include "common.h"

struct ded_rec {
	struct ks_hdr h;
	__u32 slot;
	__u16 size;
	__u16 kept;
	__u64 raw[2]; /* sys_enter_getppid: common fields + __syscall_nr + padding */
};

SEC("tracepoint/syscalls/sys_enter_getppid")
int ded_getppid(void *ctx)
{
	ks_count(KS_PRODUCED);
	struct ded_rec *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		ks_count(KS_LOST);
		return 0;
	}
	ks_fill_current(&e->h);
	e->slot = 0;
	e->size = e->kept = 16;
	/* the context's first 8 bytes (common fields) cannot be loaded directly */
	bpf_probe_read_kernel(e->raw, sizeof(e->raw), ctx);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
