/* files: open, openat, openat2 and creat, one record per call with its result.
 * The path is read at syscall entry (user memory may change by exit) and kept per thread
 * until the exit tracepoint pairs it with the return value. */
#include "common.h"

#define PATH_BYTES 256
#define O_CREAT_WRONLY_TRUNC (01000 | 0100 | 01)

struct files_event {
	struct ks_hdr h;
	__s64 ret;   /* fd, or -errno */
	__u64 flags;
	__u32 mode;
	__s32 dfd;   /* directory fd a relative path is resolved against (AT_FDCWD = -100) */
	__u32 nr;    /* syscall number */
	__u32 _pad;
	char path[PATH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct files_event);
} pending SEC(".maps");

/* The entry is built here, not on the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct files_event);
} scratch SEC(".maps");

static __always_inline int on_enter(__u32 nr, __s32 dfd, const char *path, __u64 flags, __u32 mode)
{
	if (!ks_want_current(ks_cfg()))
		return 0;
	__u32 zero = 0;
	struct files_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	ks_fill_current(&e->h);
	e->ret = 0;
	e->flags = flags;
	e->mode = mode;
	e->dfd = dfd;
	e->nr = nr;
	e->_pad = 0;
	if (bpf_probe_read_user_str(e->path, sizeof(e->path), path) < 0)
		e->path[0] = 0;
	__u32 tid = e->h.tid;
	bpf_map_update_elem(&pending, &tid, e, BPF_ANY);
	return 0;
}

static __always_inline int on_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct files_event *p = bpf_map_lookup_elem(&pending, &tid);
	if (!p)
		return 0;
	struct files_event *e = KS_RESERVE(struct files_event);
	if (e) {
		bpf_probe_read_kernel(e, sizeof(*e), p);
		e->ret = ret;
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&pending, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->id, ctx->args[0], (const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->id, -100, (const char *)ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->id, -100, (const char *)ctx->args[0], O_CREAT_WRONLY_TRUNC, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};
	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return on_enter(ctx->id, ctx->args[0], (const char *)ctx->args[1], how.flags, how.mode);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_creat")
int exit_creat(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret); }

KS_RECORD_BTF(files_event)
