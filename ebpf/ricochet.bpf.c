// SPDX-License-Identifier: Apache-2.0
/*
 * ricochet.bpf.c: Ricochet's XDP fast path.
 *
 *   unauthenticated TWAMP / STAMP test packet of a known session or listener
 *       -> reflector packet built in place, XDP_TX          (RFC 5357 §4.2.1,
 *                                                            RFC 8762 §4.3)
 *   authenticated / encrypted (session mode RC_MODE_SECURED)
 *       -> rc_xdp_meta in front of the frame, XSKMAP redirect (AF_XDP poller)
 *   everything else
 *       -> XDP_PASS, untouched
 *
 * Verifier notes (read before editing):
 *   - Every direct packet access is preceded by an explicit
 *     `if (ptr + len > data_end)` check on the SAME pointer; the verifier
 *     does not carry proofs across helper calls that may move the packet
 *     (bpf_xdp_adjust_head/tail/meta, bpf_xdp_store_bytes): after those,
 *     data/data_end are reloaded and every pointer is re-derived from a
 *     scalar offset that is itself bounded (RC_MAX_L4_OFF) so that the
 *     verifier can track the pointer's range.
 *   - Variable-length copies and checksums go through a per-CPU scratch
 *     buffer with bpf_xdp_load_bytes / bpf_xdp_store_bytes /
 *     bpf_csum_diff: lengths are checked against 1..RC_SCRATCH_MAX right
 *     before each call so that the size argument has known bounds.
 *   - Loops are bounded (#pragma unroll with constant trip counts).
 *   - The token bucket is updated under bpf_spin_lock; no helper call is
 *     made while the lock is held.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "ricochet.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- constants ----------------------------------------------------------- */

#define NS_PER_SEC 1000000000ULL
#define NTP_UNIX_OFFSET 2208988800ULL /* 1900-01-01 -> 1970-01-01 */

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define VLAN_HLEN 4

#define NH_HOPOPTS 0
#define NH_ROUTING 43
#define NH_DSTOPTS 60
#define RC_MAX_EXT_HDRS 4
/* Largest accepted offset of the UDP header: 22 (Ethernet + 2 tags) + 40 +
 * 256 octets of IPv6 extension headers. Larger stacks are passed. */
#define RC_MAX_L4_OFF 320

/* TWAMP-Test / STAMP offsets in the UDP payload (twamp-test.md §2.1, §3.1;
 * stamp.md §2.1, §2.3). */
#define TW_SENDER_HDR 14       /* smallest sender packet we accept */
#define TW_SEQ 0
#define TW_TS 4
#define TW_EE 12
#define TW_MBZ1 14             /* TWAMP: MBZ; STAMP: SSID */
#define TW_RX_TS 16
#define TW_SENDER_SEQ 24
#define TW_SENDER_TS 28
#define TW_SENDER_EE 36
#define TW_MBZ2 38
#define TW_SENDER_TTL 40
#define TW_S_DSCP_ECN 41       /* RFC 7750 */
#define TW_REFL_HDR 41         /* unauthenticated TWAMP reflector header */
#define TW_REFL_HDR_7750 44    /* with RFC 7750 DSCP/ECN monitoring */
#define STAMP_BASE 44          /* STAMP base packet, both directions */

#define EE_Z 0x4000            /* Error Estimate Z bit (RFC 8186 §2.3) */

/* Scratch: large enough for any non-fragmented XDP frame (a page minus
 * headroom and skb_shared_info). RC_SCRATCH_MAX keeps index arithmetic
 * below the buffer size so that masks never wrap. */
#define RC_SCRATCH_SIZE 4096
#define RC_SCRATCH_MAX 4000

/* ---- maps ---------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RC_MAX_SESSIONS);
	__type(key, struct rc_session_key);
	__type(value, struct rc_entry);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RC_MAX_LISTENERS);
	__type(key, struct rc_listener_key);
	__type(value, struct rc_entry);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rc_clock);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RC_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, RC_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Per-slot secured-session state for the AF_XDP pollers (ricochet.h).
 * Declared here so that libbpf creates and pins it with the other maps;
 * this program never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RC_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct rc_keys);
} keys SEC(".maps");

/* ESP: inbound SA lookup (the program reads it), per-SA poller state
 * (keys; never read here) and per-SA counters shared with the pollers
 * through an mmap (never touched here). ricochet.h documents each. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RC_MAX_ESP_SAS);
	__type(key, struct rc_esp_sa_key);
	__type(value, struct rc_esp_sa);
} esp_sas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RC_MAX_ESP_SAS);
	__type(key, __u32);
	__type(value, struct rc_esp_keys);
} esp_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, RC_MAX_ESP_SAS);
	__type(key, __u32);
	__type(value, struct rc_esp_state);
} esp_state SEC(".maps");

struct rc_scratch {
	__u8 b[RC_SCRATCH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rc_scratch);
} scratch SEC(".maps");

/* NIC receive timestamp (kernel >= 6.3). Resolved per driver only when the
 * program is loaded device-bound (BPF_F_XDP_DEV_BOUND_ONLY); otherwise the
 * kernel's default returns -EOPNOTSUPP. __weak: absent on old kernels. */
extern int bpf_xdp_metadata_rx_timestamp(const struct xdp_md *ctx,
					 __u64 *timestamp) __ksym __weak;

/* ---- small helpers ------------------------------------------------------- */

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline void put_be16(__u8 *p, __u16 v)
{
	__be16 b = bpf_htons(v);

	__builtin_memcpy(p, &b, 2);
}

static __always_inline void put_be32(__u8 *p, __u32 v)
{
	__be32 b = bpf_htonl(v);

	__builtin_memcpy(p, &b, 4);
}

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Writes a timestamp (RFC 4656 §4.1.2 NTP, or RFC 8186 PTPv2 truncated)
 * for a CLOCK_TAI nanosecond value. */
static __always_inline void put_timestamp(__u8 *p, __u64 tai_ns, int ptp,
					  __s32 tai_offset)
{
	if (ptp) {
		put_be32(p, (__u32)(tai_ns / NS_PER_SEC));
		put_be32(p + 4, (__u32)(tai_ns % NS_PER_SEC));
		return;
	}
	__s64 off_ns = (__s64)tai_offset * (__s64)NS_PER_SEC;
	__u64 utc_ns;

	if (off_ns >= 0)
		utc_ns = tai_ns > (__u64)off_ns ? tai_ns - (__u64)off_ns : 0;
	else
		utc_ns = tai_ns + (__u64)(-off_ns);
	__u64 secs = utc_ns / NS_PER_SEC + NTP_UNIX_OFFSET;
	__u64 frac = ((utc_ns % NS_PER_SEC) << 32) / NS_PER_SEC;

	put_be32(p, (__u32)secs); /* era wrap in 2036 is the format's */
	put_be32(p + 4, (__u32)frac);
}

/* Token bucket (rc_entry.rate_pps / burst). Returns 1 if the packet may be
 * answered. Tokens are kept in nano-packets so that refill needs no
 * division: elapsed_ns * rate_pps nano-packets accrue. */
static __always_inline int bucket_take(struct rc_entry *e, __u64 now)
{
	__u64 rate = e->rate_pps;

	if (rate == 0)
		return 1;
	__u64 cap = (__u64)(e->burst ? e->burst : 1) * NS_PER_SEC;
	int ok = 0;

	bpf_spin_lock(&e->lock);
	__u64 tokens = e->tokens;

	if (now > e->last_ns) {
		__u64 el = now - e->last_ns;

		/* clamp so that el * rate (rate < 2^32) cannot overflow */
		if (el > 0xffffffffULL)
			el = 0xffffffffULL;
		__u64 add = el * rate;

		tokens = (tokens > cap || add > cap - tokens) ? cap : tokens + add;
		e->last_ns = now;
	}
	if (tokens >= NS_PER_SEC) {
		tokens -= NS_PER_SEC;
		ok = 1;
	}
	e->tokens = tokens;
	bpf_spin_unlock(&e->lock);
	return ok;
}

/* One's-complement sum (unfolded) of `len` octets of the packet starting
 * at `off`, plus `seed`. The bytes are copied to the scratch buffer and
 * summed with bpf_csum_diff in 512-octet chunks (the helper's limit).
 * Returns a negative value on failure. */
static __always_inline __s64 packet_sum(struct xdp_md *ctx, __u32 off,
					__u32 len, __u32 seed)
{
	__u32 zero = 0;
	struct rc_scratch *s = bpf_map_lookup_elem(&scratch, &zero);

	if (!s)
		return -1;
	if (len == 0 || len > RC_SCRATCH_MAX)
		return -1;
	if (bpf_xdp_load_bytes(ctx, off, s->b, len))
		return -1;
	__u32 len4 = (len + 3) & ~3U;

	barrier_var(len4); /* re-check: the compiler knows, the verifier not */
	if (len4 > RC_SCRATCH_MAX + 4)
		return -1;

	/* zero the (up to 3) octets that round the length up to 4 */
#pragma unroll
	for (int i = 0; i < 3; i++) {
		__u32 idx = len + i;

		if (idx < len4) {
			barrier_var(idx); /* keep the mask: it bounds the index */
			s->b[idx & (RC_SCRATCH_SIZE - 1)] = 0;
		}
	}
	__s64 sum = seed;

#pragma unroll
	for (int i = 0; i < RC_SCRATCH_SIZE / 512; i++) {
		__u32 start = i * 512;

		if (start >= len4)
			break;
		__u32 chunk = len4 - start;

		if (chunk > 512)
			chunk = 512;
		sum = bpf_csum_diff(0, 0, (__be32 *)(s->b + start), chunk,
				    (__wsum)sum);
		if (sum < 0)
			return -1;
	}
	return sum;
}

/* Moves `len` packet octets from `from` to `to` (overlap allowed). */
static __always_inline int packet_move(struct xdp_md *ctx, __u32 from,
				       __u32 to, __u64 len)
{
	__u32 zero = 0;
	struct rc_scratch *s = bpf_map_lookup_elem(&scratch, &zero);

	if (!s)
		return -1;
	/* 64-bit length: its bounds survive a stack spill and refill */
	barrier_var(len);
	if (len == 0 || len > RC_SCRATCH_MAX)
		return -1;
	if (bpf_xdp_load_bytes(ctx, from, s->b, len))
		return -1;
	return bpf_xdp_store_bytes(ctx, to, s->b, len) ? -1 : 0;
}

/* ---- parsing ------------------------------------------------------------- */

/* What the parser learnt about the received frame; offsets from ctx->data. */
struct pkt {
	__u32 l3_off;      /* IP header */
	__u32 l4_off;      /* UDP header */
	__u32 opt_len;     /* IPv4 options / IPv6 extension headers (stripped) */
	__u32 udp_len;     /* UDP length field (header + payload) */
	__u8 family;       /* RC_FAMILY_* */
	__u8 ttl;          /* received TTL / Hop Limit */
	__u8 tos;          /* received DSCP << 2 | ECN */
	__u8 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

enum parse_result {
	PARSE_OK = 0,
	PARSE_ESP,           /* IP protocol 50: l4_off/udp_len are the ESP packet's */
	PARSE_NOT_UDP,       /* not for us */
	PARSE_MALFORMED,     /* truncated / invalid / fragment */
	PARSE_NOT_UNICAST,   /* multicast / broadcast / unspecified */
};

/* Ethernet + up to two VLAN tags (802.1ad outer, 802.1Q inner). */
static __always_inline int parse_eth(void *data, void *data_end, __u32 *l3_off,
				     __u16 *proto)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	/* group (multicast/broadcast) destination or source: never answer */
	if ((eth->h_dest[0] & 1) || (eth->h_source[0] & 1))
		return PARSE_NOT_UNICAST;
	__u16 p = bpf_ntohs(eth->h_proto);
	__u32 off = sizeof(*eth);

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (p != ETH_P_8021Q_ && p != ETH_P_8021AD_)
			break;
		/* TCI (2) then the encapsulated EtherType (2) */
		__u8 *tag = data + off;

		if ((void *)(tag + VLAN_HLEN) > data_end)
			return PARSE_MALFORMED;
		p = ((__u16)tag[2] << 8) | tag[3];
		off += VLAN_HLEN;
	}
	*l3_off = off;
	*proto = p;
	return PARSE_OK;
}

static __always_inline int v4_unicast(const __u8 *a)
{
	__u32 v = ((__u32)a[0] << 24) | ((__u32)a[1] << 16) |
		  ((__u32)a[2] << 8) | a[3];

	return v != 0 && v != 0xffffffff && (a[0] & 0xf0) != 0xe0;
}

static __always_inline int v6_unicast(const __u8 *a)
{
	__u8 any = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		any |= a[i];
	return any != 0 && a[0] != 0xff;
}

static __always_inline int parse_ipv4(struct xdp_md *ctx, void *data,
				      void *data_end, struct pkt *pk)
{
	struct iphdr *iph = data + pk->l3_off;

	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_MALFORMED;
	__u32 hlen = iph->ihl * 4;
	__u32 tot = bpf_ntohs(iph->tot_len);

	if (tot < hlen || pk->l3_off + tot > (__u32)(data_end - data))
		return PARSE_MALFORMED;
	if (iph->protocol != IPPROTO_UDP && iph->protocol != IPPROTO_ESP)
		return PARSE_NOT_UDP;
	int esp = iph->protocol == IPPROTO_ESP;
	/* Header checksum over IHL words. The header is copied to the stack
	 * first: a variable-length walk over packet memory is hard to prove
	 * in bounds, a copy of 20..60 octets is not. */
	__u8 hb[60];

	barrier_var(hlen); /* keep the bounds below visible to the verifier */
	if (hlen < sizeof(*iph) || hlen > sizeof(hb) ||
	    bpf_xdp_load_bytes(ctx, pk->l3_off, hb, hlen))
		return PARSE_MALFORMED;
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)hb, hlen, 0);

	if (sum < 0 || csum_fold(sum) != 0)
		return PARSE_MALFORMED;
	/* fragments (MF set or non-zero offset): reassembly is the kernel's */
	if (iph->frag_off & bpf_htons(0x3fff))
		return PARSE_MALFORMED;

	pk->family = RC_FAMILY_IPV4;
	pk->ttl = iph->ttl;
	pk->tos = iph->tos;
	__builtin_memcpy(pk->saddr, &iph->saddr, 4);
	__builtin_memcpy(pk->daddr, &iph->daddr, 4);
	if (!v4_unicast(pk->saddr) || !v4_unicast(pk->daddr))
		return PARSE_NOT_UNICAST;
	pk->l4_off = pk->l3_off + hlen;
	pk->opt_len = hlen - sizeof(*iph);
	/* UDP must fit the IP datagram */
	pk->udp_len = tot - hlen; /* upper bound, refined by parse_udp */
	return esp ? PARSE_ESP : PARSE_OK;
}

/* IPv6 with hop-by-hop, routing (Segments Left 0 only) and destination
 * options headers skipped; a fragment header, AH, ESP or any other next
 * header means "not a plain UDP datagram for us" and is passed. */
static __always_inline int parse_ipv6(void *data, void *data_end,
				      struct pkt *pk)
{
	struct ipv6hdr *ip6 = data + pk->l3_off;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	__u32 plen = bpf_ntohs(ip6->payload_len);

	/* plen 0 = jumbogram (hop-by-hop option): never a test packet */
	if (plen == 0 ||
	    pk->l3_off + sizeof(*ip6) + plen > (__u32)(data_end - data))
		return PARSE_MALFORMED;
	__u8 nh = ip6->nexthdr;
	__u32 off = pk->l3_off + sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < RC_MAX_EXT_HDRS; i++) {
		if (nh != NH_HOPOPTS && nh != NH_ROUTING &&
		    nh != NH_DSTOPTS)
			break;
		__u8 *ext = data + off;

		if ((void *)(ext + 8) > data_end)
			return PARSE_MALFORMED;
		/* not the final destination yet: the kernel forwards it */
		if (nh == NH_ROUTING && ext[3] != 0)
			return PARSE_NOT_UDP;
		nh = ext[0];
		off += ((__u32)ext[1] + 1) * 8;
		if (off > RC_MAX_L4_OFF)
			return PARSE_MALFORMED;
	}
	if (nh != IPPROTO_UDP && nh != IPPROTO_ESP)
		return PARSE_NOT_UDP;
	__u32 ext_len = off - (pk->l3_off + sizeof(*ip6));

	if (ext_len > plen)
		return PARSE_MALFORMED;

	pk->family = RC_FAMILY_IPV6;
	pk->ttl = ip6->hop_limit;
	pk->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	__builtin_memcpy(pk->saddr, &ip6->saddr, 16);
	__builtin_memcpy(pk->daddr, &ip6->daddr, 16);
	if (!v6_unicast(pk->saddr) || !v6_unicast(pk->daddr))
		return PARSE_NOT_UNICAST;
	pk->l4_off = off;
	pk->opt_len = ext_len;
	pk->udp_len = plen - ext_len; /* upper bound, refined by parse_udp */
	return nh == IPPROTO_ESP ? PARSE_ESP : PARSE_OK;
}

/* Verifies the UDP header and checksum of the received datagram. */
static __always_inline int parse_udp(struct xdp_md *ctx, struct pkt *pk)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (pk->l4_off > RC_MAX_L4_OFF)
		return PARSE_MALFORMED;
	struct udphdr *udp = data + pk->l4_off;

	if ((void *)(udp + 1) > data_end)
		return PARSE_MALFORMED;
	__u32 ulen = bpf_ntohs(udp->len);

	if (ulen < sizeof(*udp) || ulen > pk->udp_len)
		return PARSE_MALFORMED;
	pk->udp_len = ulen;
	pk->sport = udp->source;
	pk->dport = udp->dest;
	if (udp->source == 0)
		return PARSE_NOT_UNICAST; /* no port to answer to */

	/* Checksum: optional (0) on IPv4, mandatory on IPv6 (RFC 8200 §8.1);
	 * its value is verified later, only for packets we answer. */
	if (udp->check == 0 && pk->family == RC_FAMILY_IPV6)
		return PARSE_MALFORMED;
	return PARSE_OK;
}

/* Pseudo-header sum (RFC 768 / RFC 8200 §8.1), unfolded, in the same
 * memory-order 16-bit word arithmetic as csum_partial: the addresses' words,
 * then the protocol and the UDP length as network-order words. */
static __always_inline __u64 pseudo_sum(const struct pkt *pk, const __u8 *src,
					const __u8 *dst, __u32 ulen)
{
	__u32 n = pk->family == RC_FAMILY_IPV4 ? 2 : 8;
	__u64 sum = bpf_htons(IPPROTO_UDP) + bpf_htons((__u16)ulen);
	__u16 w;

	for (int i = 0; i < 8; i++) {
		if (i >= n)
			break;
		__builtin_memcpy(&w, src + 2 * i, 2);
		sum += w;
		__builtin_memcpy(&w, dst + 2 * i, 2);
		sum += w;
	}
	return sum;
}

/* The pseudo-header sum folded to 16 bits (not complemented): a seed for
 * packet_sum. */
static __always_inline __u32 pseudo_seed(const struct pkt *pk, const __u8 *src,
					 const __u8 *dst, __u32 ulen)
{
	return (__u16)~csum_fold(pseudo_sum(pk, src, dst, ulen));
}

/* ---- the secured path: hand the frame to the AF_XDP poller --------------- */

static __always_inline int to_xsk(struct xdp_md *ctx, const struct pkt *pk,
				  struct rc_entry *e, __u8 origin, __u64 t2,
				  __u8 ts_source)
{
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct rc_xdp_meta))) {
		count(RC_CNT_ERROR);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	struct rc_xdp_meta *meta = (void *)(long)ctx->data_meta;

	if ((void *)(meta + 1) > data) {
		count(RC_CNT_ERROR);
		return XDP_PASS;
	}
	meta->rx_ts_ns = t2;
	meta->slot = e->slot;
	meta->generation = e->generation;
	meta->payload_off = pk->l4_off + sizeof(struct udphdr);
	meta->ts_source = ts_source;
	meta->origin = origin;
	meta->magic = RC_META_MAGIC;
	/* Keeps struct rc_xdp_meta in the object's BTF (the Rust mirror's
	 * layout test reads it from there); costs one instruction. */
	__u32 meta_btf_id = bpf_core_type_id_local(struct rc_xdp_meta);

	barrier_var(meta_btf_id);

	/* A refused packet only goes there to be counted: without a socket
	 * it is dropped, and it never counts as redirected. */
	if (origin & RC_ORIGIN_F_REFUSED)
		return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);

	/* No socket on this queue: the flags' low bits are the fallback
	 * action, XDP_PASS (the kernel's UDP socket path may answer). */
	int act = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	if (act == XDP_REDIRECT) {
		__sync_fetch_and_add(&e->stats.redirected, 1);
		count(RC_CNT_REDIRECTED);
	} else {
		count(RC_CNT_REDIRECT_NO_XSK);
	}
	return act;
}

/* ---- the unauthenticated path: reflect in place ------------------------- */

static __always_inline int reflect(struct xdp_md *ctx, struct pkt *pk,
				   struct rc_entry *e, int stateful, __u64 t2,
				   const struct rc_clock *clk)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 pay_off = pk->l4_off + sizeof(struct udphdr);
	__u32 len_in = pk->udp_len - sizeof(struct udphdr);
	__u16 flags = e->flags;
	/* A stateless STAMP listener also serves TWAMP-Light (RFC 5357 App. I),
	 * which STAMP is wire-compatible with (RFC 8762 §4.6): a probe shorter
	 * than the 44-octet STAMP base can only be TWAMP-Light, answered with
	 * the 41-octet TWAMP reflector header as the socket path does, never
	 * longer than the probe. Stateful STAMP sessions keep the STAMP base. */
	int stamp = e->mode == RC_MODE_STAMP &&
		    (stateful || len_in >= STAMP_BASE);

	/* Reflector header length H and where the sender padding starts. */
	__u32 hdr = TW_REFL_HDR, pad_src = TW_SENDER_HDR;

	if (stamp) {
		/* RFC 8762 §4.3: octets past the base are copied in place */
		hdr = STAMP_BASE;
		pad_src = STAMP_BASE;
	} else {
		if (flags & RC_F_DSCP_ECN)
			hdr = TW_REFL_HDR_7750;
		if (flags & RC_F_SYMMETRICAL)
			pad_src = TW_SENDER_HDR + e->sender_mbz;
		if (pad_src > hdr) /* would drop octets the reply must carry */
			pad_src = hdr;
	}
	/* twamp-test.md §4: reply = max(received, H) octets; the sender
	 * padding is reused from its start, the tail is truncated. */
	__u32 len_out = len_in > hdr ? len_in : hdr;

	/* A stateless listener admits nobody: its reply is never larger than
	 * the packet that caused it (no amplification), so a probe shorter
	 * than the reflector header gets no reply. Sessions were admitted by
	 * TWAMP-Control and grow 14 -> 41 as RFC 5357 requires. */
	if (!stateful && len_out > len_in) {
		__sync_fetch_and_add(&e->stats.bad_length, 1);
		count(RC_CNT_DROP_BAD_LENGTH);
		return XDP_DROP;
	}

	/* RFC 6038 §4.2: the L octets to reflect must fit the reply's padding
	 * (the sender MUST send at least 27 + L octets of padding). */
	if ((flags & RC_F_REFLECT_OCTETS) &&
	    len_out < hdr + e->reflect_octets) {
		__sync_fetch_and_add(&e->stats.bad_length, 1);
		count(RC_CNT_DROP_BAD_LENGTH);
		return XDP_DROP;
	}
	__u32 copy_len = len_out - hdr;

	/* Fields of the sender packet that the rewrite overwrites. */
	__u8 *p = data + pay_off;

	if (pay_off > RC_MAX_L4_OFF + 8 ||
	    (void *)(p + TW_SENDER_HDR) > data_end) {
		count(RC_CNT_ERROR); /* cannot happen: the caller checked */
		return XDP_PASS;
	}
	__u8 s_seq[4], s_ts[8], s_ee[2], ssid[2] = {};

	__builtin_memcpy(s_seq, p + TW_SEQ, 4);
	__builtin_memcpy(s_ts, p + TW_TS, 8);
	__builtin_memcpy(s_ee, p + TW_EE, 2);
	/* STAMP SSID (RFC 8972 §3): copied; a 14-octet probe has none */
	if (stamp && len_in >= TW_MBZ1 + 2 &&
	    (void *)(p + TW_MBZ1 + 2) <= data_end)
		__builtin_memcpy(ssid, p + TW_MBZ1, 2);

	/* 1. padding: keep the lowest-numbered sender octets */
	if (copy_len && pad_src != hdr &&
	    packet_move(ctx, pay_off + pad_src, pay_off + hdr, copy_len))
		goto err;

	/* 2. length: grow (14 -> 41) or trim (Ethernet padding, truncation) */
	int delta = (int)(pay_off + len_out) -
		    (int)((long)ctx->data_end - (long)ctx->data);

	if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		/* No tailroom (veth and generic XDP hand over tight skbs):
		 * grow at the front, where XDP guarantees 256 octets of
		 * headroom, and slide the frame up. The octets left behind
		 * at the end are all inside the reflector header, which is
		 * written in full below. */
		__u32 flen = pay_off + len_out - delta; /* current length */

		if (bpf_xdp_adjust_head(ctx, -delta)) {
			count(RC_CNT_ERROR);
			return XDP_PASS; /* nothing modified yet */
		}
		if (packet_move(ctx, delta, 0, flen))
			goto err;
	} else if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		goto err;
	}

	/* 3. drop IPv4 options / IPv6 extension headers: they describe the
	 *    forward path (source routes, records) and must not be echoed. */
	__u32 l3_fixed = pk->family == RC_FAMILY_IPV4 ? sizeof(struct iphdr)
						      : sizeof(struct ipv6hdr);
	if (pk->opt_len) {
		__u32 keep = pk->l3_off + l3_fixed;

		if (packet_move(ctx, 0, pk->opt_len, keep))
			goto err;
		if (bpf_xdp_adjust_head(ctx, (int)pk->opt_len))
			goto err;
		pay_off -= pk->opt_len;
	}
	/* Re-derive every pointer (the helpers above invalidated them) from
	 * offsets whose bounds the verifier sees right here. */
	__u32 l3_off = pk->l3_off;

	barrier_var(pay_off);
	barrier_var(l3_off);
	if (pay_off > RC_MAX_L4_OFF + 8 || pay_off < 8 || l3_off > 22)
		goto err;
	__u32 l4_off = pay_off - sizeof(struct udphdr);

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp = data + l4_off;

	p = data + pay_off;
	if ((void *)(eth + 1) > data_end || (void *)(udp + 1) > data_end ||
	    (void *)(p + TW_REFL_HDR) > data_end)
		goto err;

	/* 4. reflector header (twamp-test.md §3.1, stamp.md §2.3) */
	int ptp = flags & RC_F_PTP;
	__u16 ee = clk ? clk->error_estimate : 0;
	__s32 tai_off = clk ? clk->tai_offset : 0;

	ee = (ee & ~EE_Z) | (ptp ? EE_Z : 0);
	if ((ee & 0xff) == 0)
		ee |= 1; /* Multiplier 0 is invalid (RFC 4656 §4.1.2) */

	__builtin_memset(p + TW_TS, 0, 8); /* T3: written last */
	put_be16(p + TW_EE, ee);
	__builtin_memcpy(p + TW_MBZ1, ssid, 2);
	put_timestamp(p + TW_RX_TS, t2, ptp, tai_off);
	__builtin_memcpy(p + TW_SENDER_SEQ, s_seq, 4);
	__builtin_memcpy(p + TW_SENDER_TS, s_ts, 8);
	__builtin_memcpy(p + TW_SENDER_EE, s_ee, 2);
	p[TW_MBZ2] = 0;
	p[TW_MBZ2 + 1] = 0;
	p[TW_SENDER_TTL] = pk->ttl;
	if (hdr == 44) {
		if ((void *)(p + 44) > data_end)
			goto err;
		/* RFC 7750: received DSCP and ECN; STAMP: MBZ */
		p[TW_S_DSCP_ECN] = stamp ? 0 : pk->tos;
		p[42] = 0;
		p[43] = 0;
	}

	/* 5. L2-L4: swap, TTL 255, DSCP per session, ECN Not-ECT (RFC 7750) */
	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	__u8 dscp = (flags & RC_F_SET_DSCP) ? (e->dscp & 0x3f) : (pk->tos >> 2);
	__u8 tos = dscp << 2;

	if (pk->family == RC_FAMILY_IPV4) {
		struct iphdr *iph = data + l3_off;

		if ((void *)(iph + 1) > data_end)
			goto err;
		iph->ihl = 5;
		iph->tos = tos;
		iph->tot_len = bpf_htons(sizeof(*iph) + sizeof(*udp) + len_out);
		iph->ttl = 255;
		iph->protocol = IPPROTO_UDP;
		__builtin_memcpy(&iph->saddr, pk->daddr, 4);
		__builtin_memcpy(&iph->daddr, pk->saddr, 4);
		iph->check = 0;
		__u64 sum = 0;
		__u16 *w = (__u16 *)iph;

#pragma unroll
		for (int i = 0; i < 10; i++)
			sum += w[i];
		iph->check = csum_fold(sum);
	} else {
		struct ipv6hdr *ip6 = data + l3_off;

		if ((void *)(ip6 + 1) > data_end)
			goto err;
		ip6->priority = tos >> 4;
		ip6->flow_lbl[0] = (ip6->flow_lbl[0] & 0x0f) | ((tos & 0x0f) << 4);
		ip6->payload_len = bpf_htons(sizeof(*udp) + len_out);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 255;
		__builtin_memcpy(&ip6->saddr, pk->daddr, 16);
		__builtin_memcpy(&ip6->daddr, pk->saddr, 16);
	}
	__u32 ulen = sizeof(*udp) + len_out;

	udp->source = pk->dport;
	udp->dest = pk->sport;
	udp->len = bpf_htons(ulen);
	udp->check = 0;

	/* 6. sequence number: own counter (stateful) or copied (stateless);
	 *    taken last so that failures above do not consume a number. */
	if (stateful)
		put_be32(p + TW_SEQ, __sync_fetch_and_add(&e->seq, 1));
	else
		__builtin_memcpy(p + TW_SEQ, s_seq, 4);

	/* 7. UDP checksum over everything but T3 (still zero) */
	__s64 sum = packet_sum(ctx, l4_off, ulen,
			       pseudo_seed(pk, pk->daddr, pk->saddr, ulen));

	if (sum < 0)
		goto err;

	/* 8. T3 as late as possible, folded into the checksum incrementally */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	udp = data + l4_off;
	p = data + pay_off;
	if ((void *)(udp + 1) > data_end || (void *)(p + TW_REFL_HDR) > data_end)
		goto err;
	__u8 t3[8];

	put_timestamp(t3, bpf_ktime_get_tai_ns(), ptp, tai_off);
	__builtin_memcpy(p + TW_TS, t3, 8);
	__u16 t3w[4];

	__builtin_memcpy(t3w, t3, 8);
	__u64 s64 = (__u64)(__u32)sum + t3w[0] + t3w[1] + t3w[2] + t3w[3];
	__u16 ck = csum_fold(s64);

	/* RFC 768: a computed 0 is sent as all ones */
	udp->check = ck ? ck : 0xffff;

	__sync_fetch_and_add(&e->stats.reflected, 1);
	count(RC_CNT_REFLECTED);
	return XDP_TX;

err:
	/* The frame may be half rewritten: never pass it up. */
	count(RC_CNT_ERROR);
	return XDP_DROP;
}

/* ---- ESP: known inbound SAs to the AF_XDP poller ------------------------ */

/* Smallest ESP packet worth a lookup: SPI, SN, an 8-octet IV, the 2-octet
 * trailer (4-aligned: 4) and a 16-octet ICV. */
#define RC_ESP_MIN_LEN (8 + 8 + 4 + 16)

/* T2 from the NIC when the device-bound variant may ask for it. */
static __always_inline void rx_stamp(struct xdp_md *ctx, const int hwts,
				     __u64 *t2, __u8 *ts_source)
{
	__u32 zero = 0;
	struct rc_clock *clk = bpf_map_lookup_elem(&clock, &zero);

	if (hwts && clk && (clk->flags & RC_CLOCK_NIC_RX) &&
	    bpf_ksym_exists(bpf_xdp_metadata_rx_timestamp)) {
		__u64 nic = 0;

		if (bpf_xdp_metadata_rx_timestamp(ctx, &nic) == 0 && nic) {
			*t2 = nic;
			*ts_source = RC_TS_NIC;
		}
	}
}

/* The ESP packet at esp_off (esp_len octets; raw IP protocol 50 when
 * `udp` is 0, else the payload of UDP port 4500). A known inbound SA is
 * redirected to the queue's AF_XDP socket with its slot in the metadata;
 * everything else is passed untouched (IKE behind the non-ESP marker, NAT
 * keepalives, unknown SPIs: the stack's, RFC 3948 §2.2). No decryption
 * or replay check here: the pollers do both (keys never enter the
 * kernel path). */
static __always_inline int esp_in(struct xdp_md *ctx, const struct pkt *pk,
				  __u32 esp_off, __u32 esp_len, int udp,
				  const int hwts, __u64 t2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (esp_off > RC_MAX_L4_OFF + 8) {
		count(RC_CNT_PASS_MALFORMED);
		return XDP_PASS;
	}
	__u8 *p = data + esp_off;

	/* RFC 3948 §2.2: a 1-octet 0xff payload is a NAT keepalive; §2.2 /
	 * RFC 7296 §3: a zero first word is the non-ESP marker (IKE). */
	if (udp && (esp_len < 4 || (void *)(p + 4) > data_end ||
		    (p[0] | p[1] | p[2] | p[3]) == 0)) {
		count(RC_CNT_ESP_IKE);
		return XDP_PASS;
	}
	if (esp_len < RC_ESP_MIN_LEN || (void *)(p + 8) > data_end) {
		count(RC_CNT_ESP_UNKNOWN_SPI);
		return XDP_PASS;
	}
	struct rc_esp_sa_key k = {};

	__builtin_memcpy(&k.spi, p, 4);
	k.family = pk->family;
	__builtin_memcpy(k.local_addr, pk->daddr, 16);
	struct rc_esp_sa *sa = bpf_map_lookup_elem(&esp_sas, &k);

	if (!sa || !(sa->flags & (udp ? RC_ESP_F_UDP : RC_ESP_F_RAW))) {
		count(RC_CNT_ESP_UNKNOWN_SPI);
		return XDP_PASS;
	}
	__sync_fetch_and_add(&sa->rx_packets, 1);

	__u8 ts_source = RC_TS_KERNEL_TAI;

	rx_stamp(ctx, hwts, &t2, &ts_source);
	__u32 slot = sa->slot, generation = sa->generation;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct rc_xdp_meta))) {
		count(RC_CNT_ERROR);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	struct rc_xdp_meta *meta = (void *)(long)ctx->data_meta;

	if ((void *)(meta + 1) > data) {
		count(RC_CNT_ERROR);
		return XDP_PASS;
	}
	meta->rx_ts_ns = t2;
	meta->slot = slot;
	meta->generation = generation;
	meta->payload_off = esp_off;
	meta->ts_source = ts_source;
	meta->origin = RC_ORIGIN_ESP;
	meta->magic = RC_META_MAGIC;

	int act = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	if (act == XDP_REDIRECT) {
		__sync_fetch_and_add(&sa->redirected, 1);
		count(RC_CNT_ESP_REDIRECTED);
	} else {
		count(RC_CNT_REDIRECT_NO_XSK);
	}
	return act;
}

/* ---- entry point --------------------------------------------------------- */

/* The program body; `hwts` is a compile-time constant selecting the
 * variant that asks the driver for a receive timestamp. */
static __always_inline int ricochet(struct xdp_md *ctx, const int hwts)
{
	/* T2 fallback: kernel TAI clock at entry (twamp-test.md §5 rule 1) */
	__u64 now = bpf_ktime_get_tai_ns();
	__u64 t2 = now;
	__u8 ts_source = RC_TS_KERNEL_TAI;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt pk = {};
	__u16 proto = 0;

	int r = parse_eth(data, data_end, &pk.l3_off, &proto);

	if (r == PARSE_OK) {
		if (proto == ETH_P_IP)
			r = parse_ipv4(ctx, data, data_end, &pk);
		else if (proto == ETH_P_IPV6)
			r = parse_ipv6(data, data_end, &pk);
		else
			r = PARSE_NOT_UDP;
	}
	if (r == PARSE_ESP)
		return esp_in(ctx, &pk, pk.l4_off, pk.udp_len, 0, hwts, t2);
	if (r == PARSE_OK)
		r = parse_udp(ctx, &pk);
	if (r == PARSE_OK && pk.dport == bpf_htons(RC_ESP_UDP_PORT))
		return esp_in(ctx, &pk, pk.l4_off + sizeof(struct udphdr),
			      pk.udp_len - sizeof(struct udphdr), 1, hwts, t2);
	if (r != PARSE_OK) {
		count(r == PARSE_NOT_UDP	 ? RC_CNT_PASS_NOT_UDP
		      : r == PARSE_NOT_UNICAST ? RC_CNT_PASS_NOT_UNICAST
					       : RC_CNT_PASS_MALFORMED);
		return XDP_PASS;
	}

	/* Session (stateful) first, then listener on the exact address, then
	 * the wildcard listener. Never reflect anything else. */
	struct rc_session_key sk = {};

	__builtin_memcpy(sk.local_addr, pk.daddr, 16);
	__builtin_memcpy(sk.remote_addr, pk.saddr, 16);
	sk.local_port = pk.dport;
	sk.remote_port = pk.sport;
	sk.family = pk.family;
	__u8 origin = RC_ORIGIN_SESSION;
	struct rc_entry *e = bpf_map_lookup_elem(&sessions, &sk);

	if (!e) {
		struct rc_listener_key lk = {};

		__builtin_memcpy(lk.local_addr, pk.daddr, 16);
		lk.local_port = pk.dport;
		lk.family = pk.family;
		origin = RC_ORIGIN_LISTENER;
		e = bpf_map_lookup_elem(&listeners, &lk);
		if (!e) {
			__builtin_memset(lk.local_addr, 0, 16);
			e = bpf_map_lookup_elem(&listeners, &lk);
		}
	}
	if (!e) {
		count(RC_CNT_PASS_NO_MATCH);
		return XDP_PASS;
	}
	__u32 len_in = pk.udp_len - sizeof(struct udphdr);

	/* Larger than the scratch buffer: cannot be checksummed here. */
	if (pk.udp_len > RC_SCRATCH_MAX) {
		count(RC_CNT_ERROR);
		return XDP_PASS;
	}
	__sync_fetch_and_add(&e->stats.rx_packets, 1);
	__sync_fetch_and_add(&e->stats.rx_bytes, len_in);
	/* Its traffic must arrive inside ESP (RFC 4301 §5.2: discard what
	 * matches a PROTECT policy in clear). */
	if (e->flags & RC_F_ESP_ONLY) {
		count(RC_CNT_DROP_NOT_ESP);
		return XDP_DROP;
	}

	__u32 zero = 0;
	struct rc_clock *clk = bpf_map_lookup_elem(&clock, &zero);

	if (hwts && clk && (clk->flags & RC_CLOCK_NIC_RX) &&
	    bpf_ksym_exists(bpf_xdp_metadata_rx_timestamp)) {
		__u64 nic = 0;

		if (bpf_xdp_metadata_rx_timestamp(ctx, &nic) == 0 && nic) {
			t2 = nic;
			ts_source = RC_TS_NIC;
		}
	}

	/* Received UDP checksum (RFC 768; zero = none on IPv4 only): a
	 * corrupted probe is dropped, as the kernel would. */
	if (pk.l4_off <= RC_MAX_L4_OFF) {
		struct udphdr *udp = data + pk.l4_off;

		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		if (udp->check) {
			__s64 s = packet_sum(ctx, pk.l4_off, pk.udp_len,
					     pseudo_seed(&pk, pk.saddr, pk.daddr,
							 pk.udp_len));

			if (s < 0 || csum_fold((__u32)s) != 0) {
				count(RC_CNT_PASS_MALFORMED);
				return XDP_PASS;
			}
		}
	}

	__u8 mode = e->mode;
	int secured = mode == RC_MODE_SECURED ||
		      (mode == RC_MODE_STAMP && (e->flags & RC_F_TLV_TO_XSK) &&
		       len_in > STAMP_BASE);

	if (mode != RC_MODE_TWAMP && mode != RC_MODE_STAMP &&
	    mode != RC_MODE_SECURED) {
		count(RC_CNT_PASS_NO_MATCH);
		return XDP_PASS;
	}
	if (!secured && len_in < TW_SENDER_HDR) {
		__sync_fetch_and_add(&e->stats.bad_length, 1);
		count(RC_CNT_DROP_BAD_LENGTH);
		return XDP_DROP;
	}
	/* RC_MODE_STAMP only: its packets have the unauthenticated layout
	 * (SSID at octets 14-15, RFC 8972 §3), also those handed to the
	 * socket for their TLVs. A secured entry may be authenticated STAMP
	 * (SSID at 26-27), unauthenticated STAMP or TWAMP, which this program
	 * cannot tell apart (it never reads `keys`): the pollers check the
	 * SSID there, and user space refuses the flag on such entries. */
	if (mode == RC_MODE_STAMP && (e->flags & RC_F_CHECK_SSID)) {
		__u8 *p = data + pk.l4_off + sizeof(struct udphdr);

		if (pk.l4_off > RC_MAX_L4_OFF || (void *)(p + 16) > data_end ||
		    len_in < 16 || (((__u16)p[14] << 8) | p[15]) != e->ssid) {
			count(RC_CNT_DROP_SSID);
			return XDP_DROP;
		}
	}
	if (!bucket_take(e, now)) {
		__sync_fetch_and_add(&e->stats.rate_limited, 1);
		count(RC_CNT_DROP_RATE_LIMITED);
		if (secured && (e->flags & RC_F_XSK_REFUSED))
			return to_xsk(ctx, &pk, e, origin | RC_ORIGIN_F_REFUSED,
				      t2, ts_source);
		return XDP_DROP;
	}
	if (secured)
		return to_xsk(ctx, &pk, e, origin, t2, ts_source);
	return reflect(ctx, &pk, e, origin == RC_ORIGIN_SESSION, t2, clk);
}

/* Generic variant: T2 from the kernel TAI clock. Loadable anywhere,
 * including BPF_PROG_TEST_RUN. */
SEC("xdp")
int ricochet_xdp(struct xdp_md *ctx)
{
	return ricochet(ctx, 0);
}

/* Device-bound variant (BPF_F_XDP_DEV_BOUND_ONLY + ifindex): the kernel
 * refuses metadata kfuncs in programs that are not bound to a device, so
 * the NIC timestamp lives in its own program; the loader loads one of the
 * two. */
SEC("xdp")
int ricochet_xdp_hwts(struct xdp_md *ctx)
{
	return ricochet(ctx, 1);
}
