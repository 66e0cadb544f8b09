/* drops: packets the kernel freed as dropped (skb:kfree_skb, with its drop reason), and
 * TCP segments with a bad checksum (tcp:tcp_bad_csum). Frees that are not drops
 * (SKB_CONSUMED) are skipped here, so only real drops cross into user space. The reason is a
 * number of this kernel's `enum skb_drop_reason`; user space names it from the kernel BTF. */
#include "common.h"
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

enum { EV_KFREE_SKB = 1, EV_TCP_BAD_CSUM = 2 };

struct drop_event {
	struct ks_hdr hdr;
	__u64 location;   /* kernel text address that dropped it (kfree_skb) */
	__u32 reason;     /* enum skb_drop_reason value */
	__u32 ifindex;
	__u32 len;
	__u32 netns_ino;  /* of the device's network namespace */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 ethertype;  /* skb->protocol, host byte order */
	__u16 sport;
	__u16 dport;
	__u8 event;
	__u8 ip_version;
	__u8 l4proto;
	__u8 pad[7];
	char ifname[16];
};

/* Addresses and ports from the network header, when the skb has one. */
static __always_inline void parse_headers(struct drop_event *e, struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	e->ethertype = proto;
	if (!head || nh == (__u16)~0U)
		return;
	__u8 h[40];
	__u32 l4;
	if (proto == ETH_P_IP) {
		if (bpf_probe_read_kernel(h, 20, head + nh))
			return;
		if ((h[0] >> 4) != 4)
			return;
		e->ip_version = 4;
		e->l4proto = h[9];
		__builtin_memcpy(e->saddr, h + 12, 4);
		__builtin_memcpy(e->daddr, h + 16, 4);
		if (h[7] || (h[6] & 0x1f)) /* a non-first fragment has no ports */
			return;
		l4 = nh + (h[0] & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		if (bpf_probe_read_kernel(h, 40, head + nh))
			return;
		if ((h[0] >> 4) != 6)
			return;
		e->ip_version = 6;
		e->l4proto = h[6];
		__builtin_memcpy(e->saddr, h + 8, 16);
		__builtin_memcpy(e->daddr, h + 24, 16);
		l4 = nh + 40; /* ports only when TCP/UDP follows directly */
	} else {
		return;
	}
	if (e->l4proto == IPPROTO_TCP || e->l4proto == IPPROTO_UDP) {
		__u8 p[4];
		if (!bpf_probe_read_kernel(p, 4, head + l4)) {
			e->sport = ((__u16)p[0] << 8) | p[1];
			e->dport = ((__u16)p[2] << 8) | p[3];
		}
	}
}

static __always_inline int emit(struct sk_buff *skb, __u8 event, __u32 reason, __u64 location)
{
	struct drop_event *e = KS_RESERVE(struct drop_event);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	ks_fill_current(&e->hdr);
	e->event = event;
	e->reason = reason;
	e->location = location;
	e->len = BPF_CORE_READ(skb, len);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		e->netns_ino = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), dev->name);
	} else {
		e->ifindex = BPF_CORE_READ(skb, skb_iif);
	}
	parse_headers(e, skb);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_NOT_DROPPED_YET) ||
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
		return 0;
	return emit(skb, EV_KFREE_SKB, reason, (__u64)location);
}

SEC("tp_btf/tcp_bad_csum")
int BPF_PROG(tcp_bad_csum, struct sk_buff *skb)
{
	return emit(skb, EV_TCP_BAD_CSUM, 0, 0);
}

KS_RECORD_BTF(drop_event)
