/* syscalls: every syscall as one record pairing entry (number, six raw args) with exit
 * (return value, latency). Heavy: off unless asked for. Per-task storage holds the entry. */
#include "common.h"

struct syscall_entry {
	__u64 ts;
	__u64 args[6];
	__u32 nr;
	__u32 active;
};

struct syscall_event {
	struct ks_hdr h;
	__u64 args[6];
	__s64 ret;
	__u64 latency_ns;
	__u32 nr;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_entry);
} entries SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	struct ks_config *cfg = ks_cfg();
	if (!ks_want_nr(cfg, id) || !ks_want_current(cfg))
		return 0;
	struct syscall_entry *s = bpf_task_storage_get(&entries, bpf_get_current_task_btf(), 0,
						       BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return 0;
	s->nr = id;
	s->args[0] = regs->di; /* x86-64 syscall ABI */
	s->args[1] = regs->si;
	s->args[2] = regs->dx;
	s->args[3] = regs->r10;
	s->args[4] = regs->r8;
	s->args[5] = regs->r9;
	s->active = 1;
	s->ts = bpf_ktime_get_boot_ns();
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	struct syscall_entry *s = bpf_task_storage_get(&entries, bpf_get_current_task_btf(), 0, 0);
	if (!s || !s->active)
		return 0;
	s->active = 0;
	struct syscall_event *e = KS_RESERVE(struct syscall_event);
	if (!e)
		return 0;
	ks_fill_current(&e->h);
	e->latency_ns = e->h.ts - s->ts;
	e->h.ts = s->ts; /* a row is timed by its entry */
	e->nr = s->nr;
	e->_pad = 0;
	e->ret = ret;
	__builtin_memcpy(e->args, s->args, sizeof(e->args));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

KS_RECORD_BTF(syscall_event)
