/* process: exec, fork and exit of processes (not threads), from BTF tracepoints,
 * with the context the security rules need (parent, stdio sockets, memfd / tmpfs exe). */
#include "path.h"

#define ARGV_MAX 512
#define PATH_MAX_BYTES 256
#define ENV_CHUNK 4096 /* an env string longer than this is read in several steps */
#define ENV_STEPS 256  /* env strings (or chunks) looked at, at most */

enum { EV_EXEC = 1, EV_FORK = 2, EV_EXIT = 3 };

struct process_event {
	struct ks_hdr h;
	__u32 ppid;
	__s32 exit_code;
	__u32 argv_len;     /* full length of the argument area, even when truncated */
	__u8 kind;
	__u8 stdio_sockets; /* bit i set: fd i is a socket */
	__u8 exe_memfd;
	__u8 exit_signal;
	char parent_comm[TASK_COMM_LEN];
	char exe_fstype[16];
	char filename[PATH_MAX_BYTES];
	char argv[ARGV_MAX];
	__u32 exe_seals; /* F_SEAL_* of an executed memfd (shmem) */
	__u8 ld_preload;
	__u8 _pad[3];
	char exe_path[PATH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[ENV_CHUNK]);
} envbuf SEC(".maps");

struct env_scan {
	unsigned long p, end;
	__u32 cont; /* p is inside a string, not at its start */
	__u32 found;
};

/* One env string per step: its length comes from copying it (no strlen for user memory). */
static long env_step(__u64 i, void *vctx)
{
	struct env_scan *s = vctx;
	__u32 zero = 0;
	char *b = bpf_map_lookup_elem(&envbuf, &zero);
	if (!b || s->p >= s->end)
		return 1;
	long n = bpf_probe_read_user_str(b, ENV_CHUNK, (void *)s->p);
	if (n <= 0)
		return 1;
	/* "LD_PRELOAD=" with a value: an empty one preloads nothing. */
	if (!s->cont && n >= 13 && b[0] == 'L' && b[1] == 'D' && b[2] == '_' && b[3] == 'P' &&
	    b[4] == 'R' && b[5] == 'E' && b[6] == 'L' && b[7] == 'O' && b[8] == 'A' && b[9] == 'D' &&
	    b[10] == '=') {
		s->found = 1;
		return 1;
	}
	s->cont = n == ENV_CHUNK;
	s->p += s->cont ? n - 1 : n;
	return 0;
}

static __always_inline void fill_parent(struct process_event *e, struct task_struct *t)
{
	struct task_struct *parent = BPF_CORE_READ(t, real_parent);
	e->ppid = BPF_CORE_READ(parent, tgid);
	BPF_CORE_READ_STR_INTO(&e->parent_comm, parent, comm);
}

static __always_inline __u8 stdio_sockets(struct task_struct *t)
{
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	__u8 bits = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		struct file *f = NULL;
		if (i >= max)
			break;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[i]);
		if (!f)
			continue;
		umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
		if ((mode & S_IFMT) == S_IFSOCK)
			bits |= 1 << i;
	}
	return bits;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!ks_want_current(ks_cfg()))
		return 0;
	struct process_event *e = KS_RESERVE(struct process_event);
	if (!e)
		return 0;
	ks_fill_current(&e->h);
	e->kind = EV_EXEC;
	e->exit_code = 0;
	e->exit_signal = 0;
	fill_parent(e, p);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	/* The executed file: memfd_create names its dentry "memfd:..." and leaves it unlinked. */
	struct file *file = BPF_CORE_READ(bprm, file);
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	const unsigned char *dname = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	char prefix[6] = {};
	bpf_probe_read_kernel(prefix, sizeof(prefix), dname);
	e->exe_memfd = prefix[0] == 'm' && prefix[1] == 'e' && prefix[2] == 'm' && prefix[3] == 'f' &&
		       prefix[4] == 'd' && prefix[5] == ':' && BPF_CORE_READ(inode, __i_nlink) == 0;
	bpf_probe_read_kernel_str(e->exe_fstype, sizeof(e->exe_fstype),
				  BPF_CORE_READ(inode, i_sb, s_type, name));
	/* Seals say whether a memfd's contents can still change: runtimes that run a sealed copy
	 * of themselves (runc, sandbox agents) differ from loaders that write and run a payload. */
	e->exe_seals = 0;
	if (e->exe_memfd && e->exe_fstype[0] == 't' && e->exe_fstype[1] == 'm' &&
	    e->exe_fstype[2] == 'p' && e->exe_fstype[3] == 'f' && e->exe_fstype[4] == 's' &&
	    !e->exe_fstype[5]) {
		struct shmem_inode_info *info =
			(void *)inode - bpf_core_field_offset(struct shmem_inode_info, vfs_inode);
		e->exe_seals = BPF_CORE_READ(info, seals);
	}
	e->stdio_sockets = stdio_sockets(p);

	/* argv lives in the new image's user memory, NUL-separated. */
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start), end = BPF_CORE_READ(mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	e->argv_len = len;
	if (len > ARGV_MAX - 1)
		len = ARGV_MAX - 1;
	e->argv[0] = 0;
	/* The mask proves the bound to the verifier; the last byte stays a terminator. */
	if (len && bpf_probe_read_user(e->argv, len & (ARGV_MAX - 1), (void *)start) < 0)
		e->argv_len = 0;
	e->argv[ARGV_MAX - 1] = 0;

	struct env_scan scan = {
		.p = BPF_CORE_READ(mm, env_start), .end = BPF_CORE_READ(mm, env_end),
	};
	bpf_loop(ENV_STEPS, env_step, &scan, 0);
	e->ld_preload = scan.found;
	ks_file_path(e->exe_path, file);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Only new processes: a thread shares its parent's thread group. */
	__u32 pid = BPF_CORE_READ(child, tgid), tid = BPF_CORE_READ(child, pid);
	if (tid != pid)
		return 0;
	if (!ks_want(ks_cfg(), pid, tid)) /* filter on what the row carries: the child */
		return 0;
	struct process_event *e = KS_RESERVE(struct process_event);
	if (!e)
		return 0;
	ks_fill_current(&e->h);
	e->h.pid = pid;
	e->h.tid = tid;
	e->kind = EV_FORK;
	e->ppid = BPF_CORE_READ(parent, tgid);
	BPF_CORE_READ_STR_INTO(&e->parent_comm, parent, comm);
	e->exit_code = 0;
	e->exit_signal = 0;
	e->exe_memfd = 0;
	e->stdio_sockets = 0;
	e->argv_len = 0;
	e->filename[0] = 0;
	e->exe_fstype[0] = 0;
	e->exe_seals = 0;
	e->argv[0] = 0;
	e->exe_path[0] = 0;
	e->ld_preload = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	/* One row per process: when its last thread exits. */
	if (!group_dead)
		return 0;
	if (!ks_want_current(ks_cfg()))
		return 0;
	struct process_event *e = KS_RESERVE(struct process_event);
	if (!e)
		return 0;
	ks_fill_current(&e->h);
	e->kind = EV_EXIT;
	fill_parent(e, p);
	int code = BPF_CORE_READ(p, exit_code);
	e->exit_code = (code >> 8) & 0xff;
	e->exit_signal = code & 0x7f;
	e->exe_memfd = 0;
	e->stdio_sockets = 0;
	e->argv_len = 0;
	e->filename[0] = 0;
	e->exe_fstype[0] = 0;
	e->exe_seals = 0;
	e->argv[0] = 0;
	e->exe_path[0] = 0;
	e->ld_preload = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

KS_RECORD_BTF(process_event)
