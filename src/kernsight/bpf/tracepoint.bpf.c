/* tracepoint: ONE generic program for any classic tracepoint. User space attaches it to as
 * many tracepoints as it likes, each with an attach cookie = a slot number; the slot's entry
 * in tp_conf says how big that tracepoint's record is (fixed part + where its __data_loc
 * fields are), which pids to keep and the sampling rate. The program copies the raw record
 * (up to TP_RAW_L bytes; the true size is recorded) after a common header into one of three
 * ring buffers by size class, so that every ring keeps a fixed record stride and user space
 * reads each with the fixed-stride numpy fast path. Counters are per slot. */
#include "common.h"

#define TP_SLOTS 4096 /* tracepoints attached at once */
#define TP_MAX_LOC 8  /* __data_loc / __rel_loc fields whose extent we follow */

/* Size classes: payload sizes are stride - 8 (ring header), so strides are 128, 512, 4096.
 * sched_switch (64 raw bytes) fits the small class exactly. */
#define TP_HDR 56
#define TP_REC_S 120
#define TP_REC_M 504
#define TP_REC_L 4088
#define TP_RAW_S (TP_REC_S - TP_HDR)
#define TP_RAW_M (TP_REC_M - TP_HDR)
#define TP_RAW_L (TP_REC_L - TP_HDR)

struct tp_hdr {
	struct ks_hdr h;
	__u32 slot;
	__u16 size; /* true size of the raw record (fixed part + dynamic data) */
	__u16 kept; /* bytes of it copied after this header */
};

struct tp_rec_s { struct tp_hdr t; __u8 raw[TP_RAW_S]; };
struct tp_rec_m { struct tp_hdr t; __u8 raw[TP_RAW_M]; };
struct tp_rec_l { struct tp_hdr t; __u8 raw[TP_RAW_L]; };

enum { TP_F_ACTIVE = 1, TP_F_PID = 2 };
/* loc[i]: offset of a dynamic field's u32 (offset | len << 16); bit 15 set = __rel_loc
 * (offset relative to the end of the field) */
struct tp_conf {
	__u32 flags;
	__u32 sample; /* keep one event in `sample` (0 or 1: all) */
	__u16 fixed_size;
	__u16 nloc;
	__u16 loc[TP_MAX_LOC];
};

/* Per slot, per CPU: produced (tried to emit), lost (ring full), sampled out, filtered out.
 * `seen` drives the sampling. */
struct tp_count {
	__u64 produced;
	__u64 lost;
	__u64 sampled_out;
	__u64 seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TP_SLOTS);
	__type(key, __u32);
	__type(value, struct tp_conf);
} tp_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TP_SLOTS);
	__type(key, __u32);
	__type(value, struct tp_count);
} tp_counts SEC(".maps");

/* (slot << 32 | pid) -> 1 for slots with TP_F_PID: keep the event when the current task's
 * pid (thread group) or tid (the record's common_pid) is listed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} tp_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events_m SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events_l SEC(".maps");

/* the small class uses common.h's `events` ring */

static __always_inline bool tp_pid_ok(__u32 slot, __u32 pid, __u32 tid)
{
	__u64 k = (__u64)slot << 32 | pid;
	if (bpf_map_lookup_elem(&tp_pids, &k))
		return true;
	k = (__u64)slot << 32 | tid;
	return bpf_map_lookup_elem(&tp_pids, &k) != 0;
}

static __always_inline __u32 tp_size(void *ctx, struct tp_conf *c)
{
	__u32 size = c->fixed_size;
	for (int i = 0; i < TP_MAX_LOC; i++) {
		if (i >= c->nloc)
			break;
		__u16 at = c->loc[i];
		__u32 loc = 0;
		if (bpf_probe_read_kernel(&loc, sizeof(loc), ctx + (at & 0x7fff)))
			continue;
		__u32 end = (loc & 0xffff) + (loc >> 16);
		if (at & 0x8000)
			end += (at & 0x7fff) + 4;
		if (end > size)
			size = end;
	}
	return size;
}

#define TP_EMIT(type, ring, rawmax)                                                      \
	({                                                                               \
		type *__e = bpf_ringbuf_reserve(&ring, sizeof(type), 0);                 \
		if (__e) {                                                               \
			__u32 __k = size < (rawmax) ? size : (rawmax);                   \
			ks_fill_current(&__e->t.h);                                      \
			__e->t.slot = slot;                                              \
			__e->t.size = size > 0xffff ? 0xffff : size;                     \
			__e->t.kept = __k;                                               \
			if (bpf_probe_read_kernel(__e->raw, __k & 0xffff, ctx))          \
				__e->t.kept = 0;                                         \
			bpf_ringbuf_submit(__e, 0);                                      \
		}                                                                        \
		__e != 0;                                                                \
	})

SEC("tracepoint")
int tp_generic(void *ctx)
{
	__u32 slot = bpf_get_attach_cookie(ctx);
	struct tp_conf *c = bpf_map_lookup_elem(&tp_conf, &slot);
	struct tp_count *n = bpf_map_lookup_elem(&tp_counts, &slot);
	if (!c || !n || !(c->flags & TP_F_ACTIVE))
		return 0;
	if (c->flags & TP_F_PID) {
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		if (!tp_pid_ok(slot, pid_tgid >> 32, (__u32)pid_tgid))
			return 0;
	}
	if (c->sample > 1 && n->seen++ % c->sample) {
		n->sampled_out++;
		return 0;
	}
	n->produced++;
	__u32 size = tp_size(ctx, c);
	bool ok;
	if (size <= TP_RAW_S)
		ok = TP_EMIT(struct tp_rec_s, events, TP_RAW_S);
	else if (size <= TP_RAW_M)
		ok = TP_EMIT(struct tp_rec_m, events_m, TP_RAW_M);
	else
		ok = TP_EMIT(struct tp_rec_l, events_l, TP_RAW_L);
	if (!ok)
		n->lost++;
	return 0;
}

KS_RECORD_BTF(tp_rec_s)
