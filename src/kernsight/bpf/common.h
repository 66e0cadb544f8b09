/* Shared by every kernsight BPF program: the common record header, the per-source
 * counters (nothing is lost silently) and the in-kernel filters pushed down from queries. */
#pragma once
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_COMM_LEN 16

/* Every record starts with this; user space mirrors it in sources/base.py (HEADER_FIELDS). */
struct ks_hdr {
	__u64 ts;        /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	__u32 pid;       /* thread group id, what user space calls the pid */
	__u32 tid;
	__u32 uid;
	__u32 gid;
	char comm[TASK_COMM_LEN];
};

/* One ring buffer per source; user space sizes it before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* counters[KS_PRODUCED] counts every record the program tried to emit,
 * counters[KS_LOST] every one the ring buffer (or a full map) refused. */
enum { KS_PRODUCED = 0, KS_LOST = 1, KS_NCOUNTERS = 2 };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KS_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void ks_count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1; /* per-CPU slot: no atomics needed */
}

/* Filters. Flags say which filter maps are active; an active filter keeps an event only
 * when its value is a key of the map. KS_SKIP_SELF drops kernsight's own activity, which
 * would otherwise feed back into the sources that trace syscalls. */
enum {
	KS_SKIP_SELF = 1 << 0,
	KS_F_PID = 1 << 1,
	KS_F_TID = 1 << 2,
	KS_F_UID = 1 << 3,
	KS_F_COMM = 1 << 4,
	KS_F_CGROUP = 1 << 5,
	KS_F_NR = 1 << 6,
};
struct ks_config {
	__u32 flags;
	__u32 self_pid;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ks_config);
} ks_config_map SEC(".maps");

#define KS_FILTER_MAP(name, ktype)                 \
	struct {                                   \
		__uint(type, BPF_MAP_TYPE_HASH);   \
		__uint(max_entries, 1024);         \
		__type(key, ktype);                \
		__type(value, __u8);               \
	} name SEC(".maps")

KS_FILTER_MAP(filter_pid, __u32);
KS_FILTER_MAP(filter_tid, __u32);
KS_FILTER_MAP(filter_uid, __u32);
KS_FILTER_MAP(filter_comm, char[TASK_COMM_LEN]);
KS_FILTER_MAP(filter_cgroup, __u64);
KS_FILTER_MAP(filter_nr, __u32);

static __always_inline struct ks_config *ks_cfg(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ks_config_map, &zero);
}

/* True when a row for (pid, tid), made by the current task, passes the filters: pid and tid
 * are those the row will carry (a fork row carries the child's); uid, comm and cgroup are the
 * current task's, which a forked child shares. Cheap when no filter is set. */
static __always_inline bool ks_want(struct ks_config *cfg, __u32 pid, __u32 tid)
{
	if (!cfg)
		return true;
	__u32 flags = cfg->flags;
	if (!flags)
		return true;
	if ((flags & KS_SKIP_SELF) && pid == cfg->self_pid)
		return false;
	if ((flags & KS_F_PID) && !bpf_map_lookup_elem(&filter_pid, &pid))
		return false;
	if ((flags & KS_F_TID) && !bpf_map_lookup_elem(&filter_tid, &tid))
		return false;
	if (flags & KS_F_UID) {
		__u32 uid = (__u32)bpf_get_current_uid_gid();
		if (!bpf_map_lookup_elem(&filter_uid, &uid))
			return false;
	}
	if (flags & KS_F_CGROUP) {
		__u64 cg = bpf_get_current_cgroup_id();
		if (!bpf_map_lookup_elem(&filter_cgroup, &cg))
			return false;
	}
	if (flags & KS_F_COMM) {
		char comm[TASK_COMM_LEN] = {};
		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpf_map_lookup_elem(&filter_comm, comm))
			return false;
	}
	return true;
}

static __always_inline bool ks_want_current(struct ks_config *cfg)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	return ks_want(cfg, pid_tgid >> 32, (__u32)pid_tgid);
}

static __always_inline bool ks_want_nr(struct ks_config *cfg, __u32 nr)
{
	return !cfg || !(cfg->flags & KS_F_NR) || bpf_map_lookup_elem(&filter_nr, &nr);
}

/* Fill the header from the current task. */
static __always_inline void ks_fill_current(struct ks_hdr *h)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	h->ts = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Reserve a record, counting it as produced, and as lost when the ring is full. */
#define KS_RESERVE(type)                                                  \
	({                                                                \
		ks_count(KS_PRODUCED);                                    \
		type *__e = bpf_ringbuf_reserve(&events, sizeof(type), 0); \
		if (!__e)                                                 \
			ks_count(KS_LOST);                                \
		__e;                                                      \
	})

/* Record structs are only used through casts, so the compiler would leave them out of the
 * object's BTF; this unused global function keeps them, so user space can check its decoder
 * layout against the compiler's (tests/test_sources.py). libbpf does not load unused code. */
#define KS_RECORD_BTF(type) \
	__attribute__((noinline)) int ks_btf_##type(struct type *r) { return r != 0; }
