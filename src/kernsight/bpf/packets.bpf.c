/* packets: a TC program (tcx) on ingress and egress of the watched interfaces. It parses
 * Ethernet (+ up to two VLAN tags), IPv4, IPv6 (+ a bounded extension header chain), TCP,
 * UDP and ICMP/ICMPv6, counts every packet and byte per (interface, direction), and emits a
 * record only for a packet with at least one anomaly. It never changes or drops a packet.
 *
 * The anomaly bits are a stable interface: sources/packets.py names them (CODES) and
 * docs/network.md documents them; never renumber, only append. */
#include "common.h"
#include <bpf/bpf_endian.h>

#define TC_ACT_UNSPEC (-1) /* tcx: TCX_NEXT, go on as if we were not here */

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define HEAD_BYTES 64
#define MAX_VLAN 2
#define MAX_EXT 8      /* IPv6 extension headers followed at most */
#define FRAG_RANGES 8  /* byte ranges remembered per fragmented datagram */

enum {
	A_IP4_VERSION = 0,      /* ethertype IPv4, version field not 4 */
	A_IP4_IHL = 1,          /* IHL below 5 */
	A_IP4_TOTLEN_LONG = 2,  /* total length larger than the frame */
	A_IP4_TOTLEN_SHORT = 3, /* total length smaller than the header */
	A_IP4_CSUM = 4,         /* bad header checksum */
	A_IP4_RESERVED = 5,     /* reserved (evil) flag set */
	A_FRAG_TINY = 6,        /* first fragment too short for the transport header */
	A_FRAG_OVERLAP = 7,     /* fragment overlaps one seen before (or TCP at offset 8) */
	A_FRAG_OVERSIZE = 8,    /* fragment ends past 65535 bytes */
	A_IP_LAND = 9,         /* source equals destination */
	A_IP_SRC_MCAST = 10,   /* multicast or broadcast source */
	A_IP_LOOPBACK = 11,     /* loopback address on a non-loopback interface */
	A_IP6_PLEN = 12,        /* payload length inconsistent with the frame */
	A_IP6_EXT_BAD = 13,     /* extension header truncated, or hop-by-hop not first */
	A_IP6_EXT_LOOP = 14,    /* extension header repeated, or chain longer than MAX_EXT */
	A_TCP_DOFF_SHORT = 15,  /* data offset below 5 */
	A_TCP_DOFF_PAST = 16,   /* data offset past the end of the segment */
	A_TCP_SYN_FIN = 17,
	A_TCP_SYN_RST = 18,
	A_TCP_FIN_NO_ACK = 19,
	A_TCP_NULL = 20,        /* no flag at all */
	A_TCP_XMAS = 21,        /* FIN+PSH+URG */
	A_TCP_PORT0 = 22,
	A_UDP_LEN = 23,         /* UDP length field differs from the IP payload */
	A_UDP_PORT0 = 24,
	A_ICMP_TRUNC = 25,      /* ICMP/ICMPv6 header shorter than 8 bytes */
	A_TCP_TRUNC = 26,       /* TCP header shorter than 20 bytes */
	A_UDP_TRUNC = 27,       /* UDP header shorter than 8 bytes */
	A_IP4_HDR_TRUNC = 28,   /* IPv4 header (IHL) extends past the frame */
	A_IP6_VERSION = 29,     /* ethertype IPv6, version field not 6 */
	A_IP6_TRUNC = 30,       /* frame shorter than the IPv6 header */
};
#define BIT(x) (1ULL << (x))

/* TCP flags (byte 13 of the header) */
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
#define F_URG 0x20

enum { DIR_INGRESS = 0, DIR_EGRESS = 1 };

struct packet_event {
	struct ks_hdr hdr;
	__u64 anomalies;  /* bit i set: anomaly i above */
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 len;        /* skb->len: bytes of the frame (from the L2 header) */
	__u8 saddr[16];   /* IPv4: the first 4 bytes */
	__u8 daddr[16];
	__u32 ip_id;      /* IPv4 id / IPv6 fragment id, when fragmented */
	__u16 sport;      /* host byte order */
	__u16 dport;
	__u16 ethertype;  /* after VLAN tags, host byte order */
	__u16 vlan;       /* outermost VLAN id, 0 if none */
	__u16 frag_off;   /* fragment offset in bytes */
	__u8 direction;
	__u8 ip_version;  /* 4, 6, or 0 (not IP) */
	__u8 l4proto;
	__u8 tcp_flags;
	__u8 frag_more;
	__u8 ttl;
	__u8 addr_family; /* 4 or 6 when saddr/daddr hold addresses, else 0 */
	__u8 pad[3];
	__u32 head_len;   /* bytes of head[] that hold packet data */
	__u32 reserved;   /* keeps head[] 8-aligned and the size free of padding */
	__u8 head[HEAD_BYTES];
};

/* Per (netns, interface, direction): every packet and byte, and the anomalous ones. User space
 * creates the entries of the watched interfaces, with their flags, before attaching: one
 * lookup per packet gives both. */
enum { IF_NO_L2 = 1 << 0, IF_LOOPBACK = 1 << 1 };
struct if_key {
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 direction;
};
struct if_counts {
	__u64 packets;
	__u64 bytes;
	__u64 anomalous;
	__u64 not_ip;
	__u64 flags; /* IF_*, the same on every CPU */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct if_key);
	__type(value, struct if_counts);
} if_stats SEC(".maps");

/* Fragment state, per datagram seen on one interface and direction: the byte ranges seen,
 * coalesced (in-order fragments keep one range). Bounded and LRU: an attacker can evict
 * entries, not grow the map. */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u32 ifindex;
	__u8 proto;
	__u8 version;
	__u8 direction;
	__u8 pad;
};
struct frag_state {
	__u32 start[FRAG_RANGES];
	__u32 end[FRAG_RANGES];
	__u32 n;
	__u32 total; /* datagram length once the last fragment was seen, else 0 */
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_state);
} frags SEC(".maps");

/* Parser health, user space shows these with the interface counters. */
enum { P_FRAG_RANGES_FULL = 0, P_NSTATS = 1 };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, P_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} parser_stats SEC(".maps");

/* The record is built here, not on the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct packet_event);
} scratch SEC(".maps");

static __always_inline void pstat(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&parser_stats, &which);
	if (c)
		*c += 1;
}

static __always_inline __u16 be16(const __u8 *p)
{
	return ((__u16)p[0] << 8) | p[1];
}

static __always_inline __u32 l4_min(__u8 proto)
{
	return proto == IPPROTO_TCP ? 20 : 8;
}

/* Global (non-static) functions are verified once each, not once per path through the
 * caller: that keeps the parser within the verifier's budget. Their pointer arguments may
 * be NULL as far as the verifier knows, hence the checks. */

/* Remember [s, e) of datagram k; 1 when it overlaps a range seen before. */
__noinline int frag_track(struct frag_key *k, __u32 s, __u32 e, __u32 more)
{
	if (!k)
		return 0;
	struct frag_state *st = bpf_map_lookup_elem(&frags, k);
	if (!st) {
		struct frag_state init = {};
		init.start[0] = s;
		init.end[0] = e;
		init.n = 1;
		init.total = more ? 0 : e;
		bpf_map_update_elem(&frags, k, &init, BPF_ANY);
		return 0;
	}
	__u32 n = st->n;
	bool merged = false;
	for (int i = 0; i < FRAG_RANGES; i++) {
		if (i >= n)
			break;
		if (s < st->end[i] && st->start[i] < e)
			return 1;
	}
	for (int i = 0; i < FRAG_RANGES; i++) {
		if (i >= n)
			break;
		if (st->end[i] == s) {
			st->end[i] = e;
			merged = true;
			break;
		}
		if (st->start[i] == e) {
			st->start[i] = s;
			merged = true;
			break;
		}
	}
	if (!merged) {
		if (n < FRAG_RANGES) {
			st->start[n & (FRAG_RANGES - 1)] = s;
			st->end[n & (FRAG_RANGES - 1)] = e;
			st->n = n + 1;
		} else {
			pstat(P_FRAG_RANGES_FULL); /* overlaps with the ranges not kept go unseen */
		}
	}
	if (!more)
		st->total = e;
	/* Complete (one range from 0 to the end): forget it, the id may be reused. */
	if (st->total && st->n == 1 && st->start[0] == 0 && st->end[0] == st->total)
		bpf_map_delete_elem(&frags, k);
	return 0;
}

/* Transport header checks at l4 (l4len bytes of IP payload in this packet). */
#define L4_FIRST_FRAG 1 /* a first fragment: the UDP length covers more than this packet */
#define L4_V6 2
__noinline int parse_l4(struct __sk_buff *skb, struct packet_event *r, __u32 l4, __u32 l4len,
		       __u32 how)
{
	bool first_frag = how & L4_FIRST_FRAG, is_v6 = how & L4_V6;
	__u8 h[20];
	if (!r)
		return 0;
	__u8 proto = r->l4proto;
	if (proto == IPPROTO_TCP) {
		if (l4len < 20) {
			r->anomalies |= BIT(A_TCP_TRUNC);
			return 0;
		}
		if (bpf_skb_load_bytes(skb, l4, h, 20))
			return 0;
		r->sport = be16(h);
		r->dport = be16(h + 2);
		__u8 doff = h[12] >> 4;
		__u8 f = h[13];
		r->tcp_flags = f;
		if (doff < 5)
			r->anomalies |= BIT(A_TCP_DOFF_SHORT);
		else if ((__u32)doff * 4 > l4len)
			r->anomalies |= BIT(A_TCP_DOFF_PAST);
		f &= 0x3f;
		/* One flag class per segment, most specific first (XMAS has FIN without ACK). */
		if (f == 0)
			r->anomalies |= BIT(A_TCP_NULL);
		else if ((f & (F_FIN | F_PSH | F_URG)) == (F_FIN | F_PSH | F_URG))
			r->anomalies |= BIT(A_TCP_XMAS);
		else if ((f & (F_SYN | F_FIN)) == (F_SYN | F_FIN))
			r->anomalies |= BIT(A_TCP_SYN_FIN);
		else if ((f & (F_SYN | F_RST)) == (F_SYN | F_RST))
			r->anomalies |= BIT(A_TCP_SYN_RST);
		else if ((f & F_FIN) && !(f & F_ACK))
			r->anomalies |= BIT(A_TCP_FIN_NO_ACK);
		if (r->sport == 0 || r->dport == 0)
			r->anomalies |= BIT(A_TCP_PORT0);
	} else if (proto == IPPROTO_UDP) {
		if (l4len < 8) {
			r->anomalies |= BIT(A_UDP_TRUNC);
			return 0;
		}
		if (bpf_skb_load_bytes(skb, l4, h, 8))
			return 0;
		r->sport = be16(h);
		r->dport = be16(h + 2);
		__u16 ulen = be16(h + 4);
		/* A first fragment holds part of the datagram the length describes;
		 * IPv6 jumbograms (and BIG TCP's GSO packets) carry 0. */
		if (!first_frag && !(is_v6 && ulen == 0 && skb->gso_size) && ulen != l4len)
			r->anomalies |= BIT(A_UDP_LEN);
		if (r->sport == 0 || r->dport == 0)
			r->anomalies |= BIT(A_UDP_PORT0);
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		if (l4len < 8) {
			r->anomalies |= BIT(A_ICMP_TRUNC);
			return 0;
		}
		if (bpf_skb_load_bytes(skb, l4, h, 2))
			return 0;
		r->sport = h[0]; /* ICMP type and code in the port columns */
		r->dport = h[1];
	}
	return 0;
}

__noinline int parse_ip4(struct __sk_buff *skb, struct packet_event *r, __u32 l3, __u32 iflags)
{
	__u8 h[60];
	if (!r)
		return 0;
	__u32 avail = skb->len - l3;
	if (avail < 20) {
		r->anomalies |= BIT(A_IP4_HDR_TRUNC);
		return 0;
	}
	if (bpf_skb_load_bytes(skb, l3, h, 20))
		return 0;
	__u8 ver = h[0] >> 4, ihl = h[0] & 0xf;
	r->ip_version = ver;
	r->addr_family = 4;
	__builtin_memcpy(r->saddr, h + 12, 4);
	__builtin_memcpy(r->daddr, h + 16, 4);
	r->l4proto = h[9];
	r->ttl = h[8];
	if (ver != 4) {
		r->anomalies |= BIT(A_IP4_VERSION);
		return 0;
	}
	if (ihl < 5) {
		r->anomalies |= BIT(A_IP4_IHL);
		return 0;
	}
	__u32 hlen = (__u32)ihl * 4;
	if (hlen > avail) {
		r->anomalies |= BIT(A_IP4_HDR_TRUNC);
		return 0;
	}
	__u32 tot = be16(h + 2);
	if (tot == 0 && skb->gso_size) /* BIG TCP: the length is the skb's */
		tot = avail;
	if (tot < hlen) {
		r->anomalies |= BIT(A_IP4_TOTLEN_SHORT);
		return 0;
	}
	if (tot > avail) {
		r->anomalies |= BIT(A_IP4_TOTLEN_LONG);
		return 0;
	}
	if (hlen > 20) {
		if (bpf_skb_load_bytes(skb, l3, h, hlen & 0x3c))
			return 0;
	}
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)h, hlen & 0x3c, 0);
	if (sum >= 0) {
		__u32 c = (__u32)sum;
		c = (c & 0xffff) + (c >> 16);
		c = (c & 0xffff) + (c >> 16);
		if (c != 0xffff)
			r->anomalies |= BIT(A_IP4_CSUM);
	}
	__u16 frag = be16(h + 6);
	if (frag & 0x8000)
		r->anomalies |= BIT(A_IP4_RESERVED);
	__u32 src = ((__u32)h[12] << 24) | ((__u32)h[13] << 16) | ((__u32)h[14] << 8) | h[15];
	__u32 dst = ((__u32)h[16] << 24) | ((__u32)h[17] << 16) | ((__u32)h[18] << 8) | h[19];
	if (src == dst)
		r->anomalies |= BIT(A_IP_LAND);
	if ((src >> 28) == 0xe || src == 0xffffffff)
		r->anomalies |= BIT(A_IP_SRC_MCAST);
	if (!(iflags & IF_LOOPBACK) && ((src >> 24) == 127 || (dst >> 24) == 127))
		r->anomalies |= BIT(A_IP_LOOPBACK);

	__u32 payload = tot - hlen;
	__u32 off = (__u32)(frag & 0x1fff) * 8;
	bool more = frag & 0x2000;
	if (off || more) {
		r->ip_id = be16(h + 4);
		r->frag_off = off;
		r->frag_more = more;
		__u64 before = r->anomalies;
		if (off + payload > 65535)
			r->anomalies |= BIT(A_FRAG_OVERSIZE);
		if (!off && payload < l4_min(r->l4proto))
			r->anomalies |= BIT(A_FRAG_TINY);
		if (off == 8 && r->l4proto == IPPROTO_TCP) /* rewrites the flags (RFC 1858) */
			r->anomalies |= BIT(A_FRAG_OVERLAP);
		if (r->anomalies == before) {
			struct frag_key k = {};
			__builtin_memcpy(k.saddr, h + 12, 4);
			__builtin_memcpy(k.daddr, h + 16, 4);
			k.id = r->ip_id;
			k.ifindex = skb->ifindex;
			k.proto = r->l4proto;
			k.version = 4;
			k.direction = r->direction;
			if (frag_track(&k, off, off + payload, more))
				r->anomalies |= BIT(A_FRAG_OVERLAP);
		}
		if (off || r->anomalies != before)
			return 0; /* no transport header here, or a broken one */
	}
	return parse_l4(skb, r, l3 + hlen, payload, more ? L4_FIRST_FRAG : 0);
}

/* Extension headers that are chained the generic way (next header, length). */
static __always_inline bool ip6_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135 ||
	       nh == 139 || nh == 140;
}

static __always_inline __u32 ext_bit(__u8 nh)
{
	switch (nh) {
	case 0: return 1 << 0;
	case 43: return 1 << 1;
	case 44: return 1 << 2;
	case 51: return 1 << 3;
	case 60: return 1 << 4;
	case 135: return 1 << 5;
	case 139: return 1 << 6;
	default: return 1 << 7;
	}
}

/* Where the walk of an IPv6 extension header chain is. */
struct ext_walk {
	__u32 off;        /* of the header to read */
	__u32 end;        /* end of the IPv6 payload */
	__u32 seen;       /* ext_bit() of the headers seen; bit 8: a second dstopts */
	__u32 i;          /* headers walked so far */
	__u32 first_frag; /* a fragment header with offset 0 and more fragments */
	__u8 nh;          /* type of the header at off */
};

/* One extension header at w->off: check it and step over it. Nonzero: stop the parse. */
__noinline int ip6_ext_step(struct __sk_buff *skb, struct packet_event *r, struct ext_walk *w)
{
	if (!r || !w)
		return 1;
	__u8 nh = w->nh;
	__u32 bit = ext_bit(nh);
	if (nh == 0 && w->i != 0) {
		r->anomalies |= BIT(A_IP6_EXT_BAD);
		return 1;
	}
	/* Destination options may appear twice (before routing and at the end). */
	if ((w->seen & bit) && !(nh == 60 && !(w->seen & (1 << 8)))) {
		r->anomalies |= BIT(A_IP6_EXT_LOOP);
		return 1;
	}
	if (nh == 60 && (w->seen & bit))
		w->seen |= 1 << 8;
	w->seen |= bit;
	__u8 e[8];
	__u32 off = w->off, end = w->end;
	if (off + 8 > end) {
		r->anomalies |= BIT(A_IP6_EXT_BAD);
		return 1;
	}
	if (bpf_skb_load_bytes(skb, off, e, 8))
		return 1;
	__u32 elen = nh == 44 ? 8 : nh == 51 ? ((__u32)e[1] + 2) * 4 : ((__u32)e[1] + 1) * 8;
	if (off + elen > end) {
		r->anomalies |= BIT(A_IP6_EXT_BAD);
		return 1;
	}
	if (nh == 44) {
		__u16 fo = be16(e + 2);
		__u32 foff = fo & 0xfff8;
		bool more = fo & 1;
		__u32 payload = end - (off + 8);
		r->ip_id = ((__u32)e[4] << 24) | ((__u32)e[5] << 16) | ((__u32)e[6] << 8) | e[7];
		r->frag_off = foff;
		r->frag_more = more;
		__u64 before = r->anomalies;
		if (foff + payload > 65535)
			r->anomalies |= BIT(A_FRAG_OVERSIZE);
		if (!foff && more && !ip6_ext(e[0]) && payload < l4_min(e[0]))
			r->anomalies |= BIT(A_FRAG_TINY);
		if (r->anomalies == before) {
			struct frag_key k = {};
			__builtin_memcpy(k.saddr, r->saddr, 16);
			__builtin_memcpy(k.daddr, r->daddr, 16);
			k.id = r->ip_id;
			k.ifindex = skb->ifindex;
			k.proto = e[0];
			k.version = 6;
			k.direction = r->direction;
			if (frag_track(&k, foff, foff + payload, more))
				r->anomalies |= BIT(A_FRAG_OVERLAP);
		}
		if (foff || r->anomalies != before) {
			r->l4proto = e[0];
			return 1; /* no transport header here, or a broken one */
		}
		w->first_frag = more;
	}
	w->nh = e[0];
	w->off = off + elen;
	r->l4proto = e[0];
	return 0;
}

__noinline int parse_ip6(struct __sk_buff *skb, struct packet_event *r, __u32 l3, __u32 iflags)
{
	__u8 h[40];
	bool no_l2 = iflags & IF_NO_L2;
	if (!r)
		return 0;
	__u32 avail = skb->len - l3;
	if (avail < 40) {
		r->anomalies |= BIT(A_IP6_TRUNC);
		return 0;
	}
	if (bpf_skb_load_bytes(skb, l3, h, 40))
		return 0;
	r->ip_version = h[0] >> 4;
	if (r->ip_version != 6) {
		r->anomalies |= BIT(A_IP6_VERSION);
		return 0; /* not an IPv6 header: nothing in it is an address */
	}
	r->addr_family = 6;
	__builtin_memcpy(r->saddr, h + 8, 16);
	__builtin_memcpy(r->daddr, h + 24, 16);
	r->ttl = h[7];
	__u64 s0, s1, d0, d1;
	__builtin_memcpy(&s0, h + 8, 8);
	__builtin_memcpy(&s1, h + 16, 8);
	__builtin_memcpy(&d0, h + 24, 8);
	__builtin_memcpy(&d1, h + 32, 8);
	if (s0 == d0 && s1 == d1)
		r->anomalies |= BIT(A_IP_LAND);
	if (h[8] == 0xff)
		r->anomalies |= BIT(A_IP_SRC_MCAST);
	__u64 one = bpf_cpu_to_be64(1);
	if (!(iflags & IF_LOOPBACK) && ((!s0 && s1 == one) || (!d0 && d1 == one)))
		r->anomalies |= BIT(A_IP_LOOPBACK);
	__u32 plen = be16(h + 4);
	__u8 nh = h[6];
	if (plen == 0 && (skb->gso_size || nh == 0)) /* BIG TCP, or a jumbogram */
		plen = avail - 40;
	/* Ethernet pads frames to 60 bytes (64 with a VLAN tag kept in the frame): trailing
	 * bytes in such a short frame are padding, not an inconsistency. */
	bool padded = !no_l2 && skb->len <= 64;
	if (40 + plen > avail || (40 + plen < avail && !padded)) {
		r->anomalies |= BIT(A_IP6_PLEN);
		return 0;
	}
	struct ext_walk w = {.off = l3 + 40, .end = l3 + 40 + plen, .nh = nh};
	r->l4proto = nh;
	for (int i = 0; i < MAX_EXT + 1; i++) {
		if (!ip6_ext(w.nh))
			break;
		if (i == MAX_EXT) {
			r->anomalies |= BIT(A_IP6_EXT_LOOP);
			return 0;
		}
		w.i = i;
		if (ip6_ext_step(skb, r, &w))
			return 0;
	}
	if (w.nh == 59) /* no next header */
		return 0;
	return parse_l4(skb, r, w.off, w.end - w.off, (w.first_frag ? L4_FIRST_FRAG : 0) | L4_V6);
}

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The cookie of the device's network namespace (bpf_get_netns_cookie() gives the socket's,
 * or init_net's when there is none, as on ingress). */
static __always_inline __u64 dev_netns_cookie(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	struct net_device *dev = k->dev; /* trusted pointers: plain loads, no helper calls */
	if (!dev)
		return 0;
	struct net *net = dev->nd_net.net;
	return net ? net->net_cookie : 0;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u64 cookie = dev_netns_cookie(skb);
	struct if_key ik = {.netns_cookie = cookie, .ifindex = skb->ifindex, .direction = dir};
	struct if_counts *cnt = bpf_map_lookup_elem(&if_stats, &ik);
	if (!cnt) {
		struct if_counts zero = {};
		bpf_map_update_elem(&if_stats, &ik, &zero, BPF_NOEXIST);
		cnt = bpf_map_lookup_elem(&if_stats, &ik);
		if (!cnt)
			return TC_ACT_UNSPEC;
	}
	cnt->packets++;
	cnt->bytes += skb->len;
	__u32 iflags = cnt->flags;

	__u32 zero = 0;
	struct packet_event *r = bpf_map_lookup_elem(&scratch, &zero);
	if (!r)
		return TC_ACT_UNSPEC;
	r->anomalies = 0;
	r->ip_version = 0;
	r->addr_family = 0;
	r->l4proto = 0;
	r->tcp_flags = 0;
	r->sport = r->dport = 0;
	r->ip_id = 0;
	r->frag_off = 0;
	r->frag_more = 0;
	r->ttl = 0;
	r->vlan = 0;
	__builtin_memset(r->saddr, 0, 16);
	__builtin_memset(r->daddr, 0, 16);
	r->direction = dir;

	__u32 l3 = 0;
	__u16 proto = bpf_ntohs(skb->protocol);
	if (skb->vlan_present)
		r->vlan = skb->vlan_tci & 0xfff;
	if (!(iflags & IF_NO_L2)) {
		__u8 eth[ETH_HLEN];
		if (bpf_skb_load_bytes(skb, 0, eth, ETH_HLEN))
			goto not_ip;
		proto = be16(eth + 12);
		l3 = ETH_HLEN;
		for (int i = 0; i < MAX_VLAN; i++) {
			if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
				break;
			__u8 tag[4];
			if (bpf_skb_load_bytes(skb, l3, tag, 4))
				goto not_ip;
			if (!r->vlan)
				r->vlan = be16(tag) & 0xfff;
			proto = be16(tag + 2);
			l3 += 4;
		}
	}
	r->ethertype = proto;
	if (proto == ETH_P_IP)
		parse_ip4(skb, r, l3, iflags);
	else if (proto == ETH_P_IPV6)
		parse_ip6(skb, r, l3, iflags);
	else
		goto not_ip;

	if (!r->anomalies)
		return TC_ACT_UNSPEC;
	cnt->anomalous++;
	if (dir == DIR_EGRESS) /* on egress the task is usually the sender; on ingress, anyone */
		ks_fill_current(&r->hdr);
	else
		__builtin_memset(&r->hdr, 0, sizeof(r->hdr));
	r->hdr.ts = bpf_ktime_get_boot_ns();
	r->netns_cookie = cookie;
	r->ifindex = skb->ifindex;
	r->len = skb->len;
	__u32 n = skb->len < HEAD_BYTES ? skb->len : HEAD_BYTES;
	r->head_len = 0;
	if (n >= 1 && n <= HEAD_BYTES && !bpf_skb_load_bytes(skb, 0, r->head, n))
		r->head_len = n;
	ks_count(KS_PRODUCED);
	if (bpf_ringbuf_output(&events, r, sizeof(*r), 0))
		ks_count(KS_LOST);
	return TC_ACT_UNSPEC;

not_ip:
	cnt->not_ip++;
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ks_pkt_ingress(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

SEC("tc")
int ks_pkt_egress(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

KS_RECORD_BTF(packet_event)
