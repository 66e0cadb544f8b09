/* syscall_stats: syscalls counted in the kernel per (process, syscall number). Only the
 * aggregate crosses to user space, which reads the map periodically and emits deltas. */
#include "common.h"

struct stats_key {
	__u32 pid;
	__u32 nr;
};

struct stats_value {
	__u64 count;
	__u64 errors;
	__u64 total_ns;
	__u64 max_ns;
	__u64 cgroup_id;
	__u32 uid;
	__u32 tid; /* the first thread seen making the call */
	char comm[TASK_COMM_LEN];
};

struct entry {
	__u64 ts;
	__u32 nr;
	__u32 active;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct entry);
} entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stats_key);
	__type(value, struct stats_value);
} stats SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	struct ks_config *cfg = ks_cfg();
	if (!ks_want_nr(cfg, id) || !ks_want_current(cfg))
		return 0;
	struct entry *s = bpf_task_storage_get(&entries, bpf_get_current_task_btf(), 0,
					       BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return 0;
	s->nr = id;
	s->active = 1;
	s->ts = bpf_ktime_get_boot_ns();
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	struct entry *s = bpf_task_storage_get(&entries, bpf_get_current_task_btf(), 0, 0);
	if (!s || !s->active)
		return 0;
	s->active = 0;
	ks_count(KS_PRODUCED); /* every observed call; one that cannot be counted is lost */
	__u64 lat = bpf_ktime_get_boot_ns() - s->ts;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct stats_key key = {.pid = pid_tgid >> 32, .nr = s->nr};
	struct stats_value *v = bpf_map_lookup_elem(&stats, &key);
	if (!v) {
		struct stats_value init = {};
		init.cgroup_id = bpf_get_current_cgroup_id();
		init.uid = (__u32)bpf_get_current_uid_gid();
		init.tid = (__u32)pid_tgid;
		bpf_get_current_comm(init.comm, sizeof(init.comm));
		bpf_map_update_elem(&stats, &key, &init, BPF_NOEXIST); /* may race another CPU: fine */
		v = bpf_map_lookup_elem(&stats, &key);
		if (!v) {
			ks_count(KS_LOST); /* map full */
			return 0;
		}
	}
	/* The name can change (exec, prctl): refresh it now and then, not on every call. */
	if ((__sync_fetch_and_add(&v->count, 1) & 1023) == 1023)
		bpf_get_current_comm(v->comm, sizeof(v->comm));
	if (ret < 0 && ret >= -4095)
		__sync_fetch_and_add(&v->errors, 1);
	__sync_fetch_and_add(&v->total_ns, lat);
	if (lat > v->max_ns)
		v->max_ns = lat; /* racy max: close enough for a maximum */
	return 0;
}

KS_RECORD_BTF(stats_value)
