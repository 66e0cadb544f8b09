/* Kernel-side path resolution for the sources that report files by fd or relative path:
 * walk the dentries (and the mounts they sit on) from a file up to the root, bounded. */
#pragma once
#include "common.h"

#define PATH_BYTES 256 /* a path field, NUL included */
#define PATH_DEPTH 40  /* components walked at most (mount crossings included) */
#define AT_FDCWD -100
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The walk writes right to left into buf[0, PATH_BYTES), a relative tail is appended at
 * buf[PATH_BYTES], so the joined result is contiguous and copied out with one read. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[4 * PATH_BYTES]);
} pathbuf SEC(".maps");

struct path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	__s32 pos;  /* start of what is written so far */
	__u32 pseudo; /* the file is not in any directory (socket, pipe, memfd) */
};

static long path_step(__u64 i, void *vctx)
{
	struct path_walk *w = vctx;
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&pathbuf, &zero);
	if (!buf)
		return 1;
	/* Locals: CO-RE reads must start from kernel types, not from this struct. */
	struct dentry *d = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	if (d == BPF_CORE_READ(vfsmnt, mnt_root)) {
		/* Top of this mount: continue from where it is mounted, or stop at the root. */
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
		if (!up || up == mnt)
			return 1;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vfsmnt = (void *)up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	__u32 len = BPF_CORE_READ(d, d_name.len);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	__s32 pos = w->pos;
	if (len > 255 || (__s32)len + 1 > pos)
		return 1; /* does not fit: keep the deepest components */
	pos -= len;
	bpf_probe_read_kernel(buf + (pos & (PATH_BYTES - 1)), len & (PATH_BYTES - 1), name);
	pos -= 1;
	buf[pos & (PATH_BYTES - 1)] = '/';
	w->pos = pos;
	if (!parent || parent == d) { /* a pseudo file: its name is all there is */
		w->pseudo = 1;
		return 1;
	}
	w->dentry = parent;
	return 0;
}

/* out <- the absolute path of (dentry, vfsmnt), followed by "/" + rel when rel (a user
 * pointer to a relative path) is given. */
static __noinline int ks_resolve(char *out, struct dentry *dentry, struct vfsmount *vfsmnt,
				 const char *rel)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&pathbuf, &zero);
	if (!buf || !out)
		return 0;
	out[0] = 0;
	if (!dentry || !vfsmnt)
		return 0;
	struct path_walk w = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt),
		.pos = PATH_BYTES,
	};
	bpf_loop(PATH_DEPTH, path_step, &w, 0);
	if (w.pseudo) {
		/* "fstype:name" (sockfs:TCP, pipefs:, tmpfs:memfd:x), never mistaken for a path. */
		long n = bpf_probe_read_kernel_str(out, 16, BPF_CORE_READ(dentry, d_sb, s_type, name));
		if (n <= 0)
			n = 1;
		out[(n - 1) & 15] = ':';
		bpf_probe_read_kernel_str(out + (n & 15), PATH_BYTES - 16,
					  BPF_CORE_READ(dentry, d_name.name));
		return 0;
	}
	__s32 pos = w.pos;
	if (pos >= PATH_BYTES || pos < 0) {
		pos = PATH_BYTES - 1;
		buf[PATH_BYTES - 1] = '/';
	}
	if (rel) {
		__u32 at = PATH_BYTES;
		if (pos < PATH_BYTES - 1) /* not the root itself */
			buf[at++] = '/';
		bpf_probe_read_user_str(buf + at, PATH_BYTES, rel);
	} else {
		buf[PATH_BYTES] = 0;
	}
	bpf_probe_read_kernel_str(out, PATH_BYTES, buf + (pos & (PATH_BYTES - 1)));
	return 0;
}

/* The file behind fd in task t's fd table, or NULL. */
static __always_inline struct file *ks_fd_file(struct task_struct *t, __s64 fd)
{
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline int ks_file_path(char *out, struct file *f)
{
	if (!f) {
		out[0] = 0;
		return 0;
	}
	return ks_resolve(out, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), 0);
}

static __always_inline bool ks_is_socket(struct file *f)
{
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	return f && (mode & S_IFMT) == S_IFSOCK;
}
