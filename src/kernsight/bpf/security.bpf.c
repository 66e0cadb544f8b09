/* security: the syscalls security rules watch, selected in the kernel, one record per
 * completed call with its result and the context a rule needs (target process, resolved
 * paths, socket kind, the caller's exe...).
 *
 * Every syscall costs one array lookup (`watch`, filled by user space with what to decode
 * for each watched number). A watched call's entry (arguments, caller credentials, the
 * target task, which may be gone by exit) waits in `pending` keyed by tid; the record is
 * built at exit, when the kernel has already faulted in the user strings it copied. */
#include "path.h"

#define NAME_BYTES 64
#define MAX_NR 1024

/* What to decode for one syscall number; mirrored by sources/security.py (WATCH_DTYPE). */
enum {
	K_GENERIC = 1, K_PTRACE, K_PROCESS_VM, K_KILL, K_TKILL, K_TGKILL, K_PIDFD_SIGNAL,
	K_SOCKET, K_CLONE, K_CLONE3, K_DUP, K_BPF, K_SETNS,
};
enum { W_RAW_PATH = 1, W_RAW_PATH2 = 2, W_EXE_CHECK = 4 };
struct watch {
	__u8 kind; /* 0: not watched */
	__s8 path, path_dfd, path_fd; /* argument indexes, -1: none */
	__s8 path2, path2_dfd;
	__s8 name, flags, mode;
	__u8 opts;
	__u8 _pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NR);
	__type(key, __u32);
	__type(value, struct watch);
} watch SEC(".maps");

struct pending_call {
	__u64 ts;
	__u64 args[6];
	__u64 flags;
	__s64 target_pid;
	__u32 uid, gid, euid, nr;
	__u8 target_kernsight, exe_linked, _pad[6];
	char target_comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH); /* not LRU: a full map refuses, and that is counted */
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct pending_call);
} pending SEC(".maps");

struct security_event {
	struct ks_hdr h;
	__u64 args[6];
	__s64 ret;
	__u64 flags;
	__s64 target_pid;
	__s64 request;
	__u32 nr;
	__u32 euid;
	__u32 mode;
	__s32 signal;
	__s32 family;
	__s32 sock_type;
	__s32 protocol;
	__u8 target_kernsight;
	__u8 fd_is_socket;
	__u8 self_exe_deleted;
	__u8 _pad;
	char target_comm[TASK_COMM_LEN];
	char name[NAME_BYTES];
	char exe[PATH_BYTES];
	char path[PATH_BYTES];
	char path2[PATH_BYTES];
};

#define AF_NETLINK 16
#define AF_PACKET 17
#define SOCK_RAW 3
#define SOCK_PACKET 10
#define BPF_PROG_LOAD 5
/* bpf() commands kept: loading, attaching, detaching, and taking fds of others' programs,
 * links and maps; map reads/writes and queries (monitoring tools poll them) are not. */
#define BPF_CMDS_KEPT ((1ULL << BPF_PROG_LOAD) | (1ULL << 8) | (1ULL << 9) | (1ULL << 13) | \
		       (1ULL << 14) | (1ULL << 17) | (1ULL << 28) | (1ULL << 29) |          \
		       (1ULL << 30) | (1ULL << 34))
#define PTRACE_TRACEME 0
/* CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET; clone3 adds
 * CLONE_NEWTIME, which in clone()'s flags would be the exit signal's bits. */
#define CLONE_NS_FLAGS 0x7E020000ULL
#define CLONE_NEWTIME 0x80ULL

extern struct task_struct *bpf_task_from_vpid(s32 vpid) __ksym;
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;

static __always_inline __u64 arg(const __u64 *args, __s8 i)
{
	return i >= 0 && i < 6 ? args[i] : 0;
}

/* The target of ptrace/kill/...: vpid as the caller sees it -> its thread group, by global
 * pid (what the other tables carry). Returns false when it is the caller itself. */
static __always_inline bool set_target(struct pending_call *p, struct ks_config *cfg, s32 vpid,
				       __u32 self)
{
	p->target_pid = vpid;
	if (vpid == -1) /* kill(-1, ...) signals every process it may, kernsight included */
		p->target_kernsight = 1;
	if (vpid <= 0)
		return true;
	struct task_struct *t = bpf_task_from_vpid(vpid);
	if (!t)
		return true;
	__u32 tgid = t->tgid;
	p->target_pid = tgid;
	bpf_probe_read_kernel_str(p->target_comm, sizeof(p->target_comm), t->comm);
	bpf_task_release(t);
	if (cfg && tgid == cfg->self_pid)
		p->target_kernsight = 1;
	return tgid != self;
}

/* A pidfd's target: pidfs keeps the struct pid in the inode; numbers[0] is the global pid. */
static __always_inline s32 pidfd_pid(struct task_struct *cur, __s64 fd)
{
	struct file *f = ks_fd_file(cur, fd);
	if (!f)
		return 0;
	char fs[6] = {};
	bpf_probe_read_kernel_str(fs, sizeof(fs), BPF_CORE_READ(f, f_inode, i_sb, s_type, name));
	if (!(fs[0] == 'p' && fs[1] == 'i' && fs[2] == 'd' && fs[3] == 'f' && fs[4] == 's'))
		return 0;
	struct pid *pid = BPF_CORE_READ(f, f_inode, i_private);
	return BPF_CORE_READ(pid, numbers[0].nr);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	__u32 nr = id;
	struct watch *w = bpf_map_lookup_elem(&watch, &nr);
	if (!w || !w->kind)
		return 0; /* the cost of every other syscall */
	struct ks_config *cfg = ks_cfg();
	if (!ks_want_nr(cfg, nr) || !ks_want_current(cfg))
		return 0;
	struct task_struct *cur = bpf_get_current_task_btf();
	struct pending_call p = {};
	p.args[0] = regs->di; /* x86-64 syscall ABI */
	p.args[1] = regs->si;
	p.args[2] = regs->dx;
	p.args[3] = regs->r10;
	p.args[4] = regs->r8;
	p.args[5] = regs->r9;
	p.nr = nr;
	p.euid = BPF_CORE_READ(cur, cred, euid.val);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 self = pid_tgid >> 32;
	s32 gpid;

	switch (w->kind) {
	case K_PTRACE:
		if (p.args[0] != PTRACE_TRACEME)
			set_target(&p, cfg, p.args[1], 0);
		break;
	case K_PROCESS_VM:
		set_target(&p, cfg, p.args[0], 0);
		break;
	case K_KILL:
	case K_TKILL:
	case K_TGKILL:
		/* A process signalling itself is left out: Go's runtime preempts its own threads
		 * with tgkill thousands of times a second. */
		if (!set_target(&p, cfg, p.args[0], self))
			return 0;
		break;
	case K_PIDFD_SIGNAL:
		gpid = pidfd_pid(cur, p.args[0]);
		if (gpid > 0) {
			struct task_struct *t = bpf_task_from_pid(gpid);
			p.target_pid = gpid;
			if (t) {
				p.target_pid = t->tgid;
				bpf_probe_read_kernel_str(p.target_comm, sizeof(p.target_comm), t->comm);
				bpf_task_release(t);
			}
			if (p.target_pid == self)
				return 0;
			if (cfg && p.target_pid == cfg->self_pid)
				p.target_kernsight = 1;
		}
		break;
	case K_SOCKET: {
		/* Packet sockets, and raw ones except netlink's (every `ip` and systemd uses those). */
		__u32 type = p.args[1] & 0xf;
		if (p.args[0] != AF_PACKET &&
		    (p.args[0] == AF_NETLINK || (type != SOCK_RAW && type != SOCK_PACKET)))
			return 0;
		break;
	}
	case K_BPF:
		if (p.args[0] >= 64 || !((1ULL << p.args[0]) & BPF_CMDS_KEPT))
			return 0;
		break;
	case K_CLONE:
		if (!(p.args[0] & CLONE_NS_FLAGS))
			return 0;
		p.flags = p.args[0];
		break;
	case K_CLONE3:
		/* struct clone_args starts with its u64 flags. */
		if (bpf_probe_read_user(&p.flags, sizeof(p.flags), (void *)p.args[0]) < 0)
			p.flags = 0;
		if (!(p.flags & (CLONE_NS_FLAGS | CLONE_NEWTIME)))
			return 0;
		break;
	}
	if (w->opts & W_EXE_CHECK)
		p.exe_linked = BPF_CORE_READ(cur, mm, exe_file, f_inode, __i_nlink) > 0;
	__u64 uid_gid = bpf_get_current_uid_gid();
	p.uid = uid_gid;
	p.gid = uid_gid >> 32;
	p.ts = bpf_ktime_get_boot_ns();
	__u32 tid = pid_tgid;
	if (bpf_map_update_elem(&pending, &tid, &p, BPF_ANY)) {
		ks_count(KS_PRODUCED); /* the call happened; its record is lost */
		ks_count(KS_LOST);
	}
	return 0;
}

/* A path argument: as passed when absolute (or raw: a symlink's target, a mount source);
 * a relative one joined to its directory fd or the cwd; none (NULL or "") is the dir fd's
 * file itself (utimensat(fd, NULL) = futimens). */
static __always_inline void user_path(char *out, struct task_struct *cur, const __u64 *args,
				      __s8 ai, __s8 dfd_i, bool raw)
{
	const char *up = (const char *)arg(args, ai);
	char first = 0;
	if (up && bpf_probe_read_user(&first, 1, up) < 0) {
		out[0] = 0;
		return;
	}
	if (raw || first == '/') {
		if (bpf_probe_read_user_str(out, PATH_BYTES, up) < 0)
			out[0] = 0;
		return;
	}
	__s32 dfd = dfd_i >= 0 ? (__s32)arg(args, dfd_i) : AT_FDCWD;
	struct dentry *d;
	struct vfsmount *m;
	if (dfd == AT_FDCWD) {
		d = BPF_CORE_READ(cur, fs, pwd.dentry);
		m = BPF_CORE_READ(cur, fs, pwd.mnt);
	} else {
		struct file *f = ks_fd_file(cur, dfd);
		d = BPF_CORE_READ(f, f_path.dentry);
		m = BPF_CORE_READ(f, f_path.mnt);
	}
	ks_resolve(out, d, m, first ? up : 0);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	__u32 nr = regs->orig_ax;
	struct watch *w = bpf_map_lookup_elem(&watch, &nr);
	if (!w || !w->kind)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending_call *p = bpf_map_lookup_elem(&pending, &tid);
	if (!p)
		return 0;
	if (p->nr != nr) { /* a tracer changed the call: what was recorded is not what ran */
		bpf_map_delete_elem(&pending, &tid);
		return 0;
	}
	struct security_event *e = KS_RESERVE(struct security_event);
	if (!e) {
		bpf_map_delete_elem(&pending, &tid);
		return 0;
	}
	struct task_struct *cur = bpf_get_current_task_btf();
	ks_fill_current(&e->h);
	e->h.ts = p->ts; /* a row is timed by its entry, credentials as they were then */
	e->h.uid = p->uid;
	e->h.gid = p->gid;
	__builtin_memcpy(e->args, p->args, sizeof(e->args));
	e->ret = ret;
	e->nr = nr;
	e->euid = p->euid;
	e->flags = w->flags >= 0 ? arg(p->args, w->flags) : p->flags;
	e->mode = arg(p->args, w->mode);
	e->target_pid = p->target_pid;
	e->target_kernsight = p->target_kernsight;
	__builtin_memcpy(e->target_comm, p->target_comm, sizeof(e->target_comm));
	e->request = 0;
	e->signal = 0;
	e->family = 0;
	e->sock_type = 0;
	e->protocol = 0;
	e->fd_is_socket = 0;
	e->_pad = 0;
	e->name[0] = 0;
	e->path2[0] = 0;

	if (w->path_fd >= 0) {
		struct file *f = ks_fd_file(cur, arg(p->args, w->path_fd));
		ks_file_path(e->path, f);
		if (w->kind == K_DUP)
			e->fd_is_socket = ks_is_socket(f);
	} else if (w->path >= 0) {
		user_path(e->path, cur, p->args, w->path, w->path_dfd, w->opts & W_RAW_PATH);
	} else {
		e->path[0] = 0;
	}
	if (w->path2 >= 0)
		user_path(e->path2, cur, p->args, w->path2, w->path2_dfd, w->opts & W_RAW_PATH2);
	if (w->name >= 0 &&
	    bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)arg(p->args, w->name)) < 0)
		e->name[0] = 0;

	switch (w->kind) {
	case K_PTRACE:
		e->request = p->args[0];
		break;
	case K_KILL:
	case K_TKILL:
	case K_PIDFD_SIGNAL:
		e->signal = p->args[1];
		break;
	case K_TGKILL:
		e->signal = p->args[2];
		break;
	case K_SOCKET:
		e->family = p->args[0];
		e->sock_type = p->args[1] & 0xf;
		e->protocol = p->args[2];
		break;
	case K_SETNS: {
		/* The kind of namespace behind the fd ("mnt", "user", "net"...): nstype may be 0. */
		struct file *f = ks_fd_file(cur, p->args[0]);
		char fs[5] = {};
		bpf_probe_read_kernel_str(fs, sizeof(fs), BPF_CORE_READ(f, f_inode, i_sb, s_type, name));
		if (fs[0] == 'n' && fs[1] == 's' && fs[2] == 'f' && fs[3] == 's') {
			struct ns_common *ns = BPF_CORE_READ(f, f_inode, i_private);
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), BPF_CORE_READ(ns, ops, name));
		}
		break;
	}
	case K_BPF:
		e->request = p->args[0]; /* the bpf command */
		if (p->args[0] == BPF_PROG_LOAD &&
		    bpf_probe_read_user_str(e->name, 16,
					    (void *)p->args[1] +
						    __builtin_offsetof(union bpf_attr, prog_name)) < 0)
			e->name[0] = 0;
		break;
	}

	e->self_exe_deleted = 0;
	struct file *exe = BPF_CORE_READ(cur, mm, exe_file);
	if ((w->opts & W_EXE_CHECK) && p->exe_linked)
		e->self_exe_deleted = BPF_CORE_READ(exe, f_inode, __i_nlink) == 0;
	ks_file_path(e->exe, exe);
	bpf_map_delete_elem(&pending, &tid);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

KS_RECORD_BTF(security_event)
