// SPDX-License-Identifier: Apache-2.0
/*
 * bench.bpf.c: the benchmark's BPF programs (ricochet-bench).
 *
 *   bench_gen      generator, run only through BPF_PROG_TEST_RUN with
 *                  BPF_F_TEST_XDP_LIVE_FRAMES on the sender veth: paces
 *                  itself (see "Rate control" below), writes the
 *                  template test frame, stamps sequence number and T1 (or
 *                  copies a pre-protected pool entry), fixes the UDP
 *                  checksum incrementally, records the send time, XDP_TX.
 *   bench_count    sender-side counter attached to the sender veth: replies
 *                  of the generator's flow (by ports) are counted per CPU,
 *                  measured (RTT, reflector residence T3 - T2, reordering)
 *                  into per-CPU histograms, then XDP_DROP, so the socket
 *                  stack never sees them. Everything else: XDP_PASS.
 *   bench_ceiling  the ceiling target: swaps MACs, addresses and ports of
 *                  any UDP packet and returns XDP_TX, nothing else.
 *   bench_pass     XDP_PASS only: a veth delivers XDP_TX/redirected frames
 *                  only to a peer whose NAPI runs, which an attached XDP
 *                  program guarantees (socket-path targets).
 *
 * Why histograms and not a ring buffer: at several Mpps a ring buffer
 * costs a reservation and a wake-up per sample and a user-space consumer
 * that would compete with the generator for the VM's two cores. Per-CPU
 * log-linear histograms (~3 % bucket width, bench.h) cost one array
 * increment and are read once per trial.
 *
 * Rate control: every BPF_PROG_TEST_RUN call sets up and tears down a page
 * pool (an RCU grace period, tens of milliseconds), so a trial is one long
 * call, ended by a signal, and the generator paces itself: it keeps an
 * absolute per-CPU schedule (interval in ns << 16) and returns XDP_DROP
 * (cheap, the page is recycled at once) for iterations before the next
 * send time or after stop_ns. A generator that falls behind sends at most
 * max_burst frames back to back to catch up, so the offered rate that user
 * space computes (frames sent / trial time) is what really went out.
 *
 * Frames of BPF_PROG_TEST_RUN live mode are recycled pages that the
 * reflector may have rewritten (on a veth the same page travels to the
 * peer's XDP program and back), so the generator rewrites the whole frame
 * from the template every time instead of patching the previous content.
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

#include "bench.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NS_PER_SEC 1000000000ULL
#define NTP_UNIX_OFFSET 2208988800ULL
#define EE_Z 0x4000

/* ---- maps ---------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_gen_cfg);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_gen_stats);
} gen_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} template SEC(".maps");

/* Pre-protected test packets (authenticated / encrypted modes): entry i
 * holds the first pool_len octets of the packet with sequence number i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BENCH_SLOTS);
	__type(key, __u32);
	__type(value, struct bench_pool_entry);
} pool SEC(".maps");

/* CLOCK_MONOTONIC send time of sequence number s at s % BENCH_SLOTS. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BENCH_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} send_ns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_cnt_cfg);
} cnt_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_cnt_stats);
} cnt_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BENCH_HIST_KINDS);
	__type(key, __u32);
	__type(value, struct bench_hist);
} hist SEC(".maps");

/* ---- helpers ------------------------------------------------------------- */

static __always_inline void put_be32(__u8 *p, __u32 v)
{
	__be32 b = bpf_htonl(v);

	__builtin_memcpy(p, &b, 4);
}

static __always_inline __u32 get_be32(const __u8 *p)
{
	__be32 b;

	__builtin_memcpy(&b, p, 4);
	return bpf_ntohl(b);
}

/* One's-complement fold of a 32-bit partial sum to 16 bits (not inverted). */
static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* RFC 4656 §4.1.2 NTP or RFC 8186 PTPv2-truncated timestamp of a CLOCK_TAI
 * nanosecond value (NTP is UTC: TAI - tai_offset seconds). */
static __always_inline void put_timestamp(__u8 *p, __u64 tai_ns, int ptp,
					  __s32 tai_offset)
{
	if (ptp) {
		put_be32(p, (__u32)(tai_ns / NS_PER_SEC));
		put_be32(p + 4, (__u32)(tai_ns % NS_PER_SEC));
		return;
	}
	__u64 utc_ns = tai_ns - (__u64)((__s64)tai_offset * (__s64)NS_PER_SEC);
	__u64 secs = utc_ns / NS_PER_SEC + NTP_UNIX_OFFSET;
	__u64 frac = ((utc_ns % NS_PER_SEC) << 32) / NS_PER_SEC;

	put_be32(p, (__u32)secs);
	put_be32(p + 4, (__u32)frac);
}

/* A timestamp field as nanoseconds on its own scale (NTP: since 1900 UTC,
 * PTP: since 1970 TAI); differences of two fields of one format are exact
 * to 1 ns. */
static __always_inline __u64 timestamp_ns(const __u8 *p, int ptp)
{
	__u64 secs = get_be32(p);
	__u64 sub = get_be32(p + 4);

	if (ptp)
		return secs * NS_PER_SEC + sub;
	return secs * NS_PER_SEC + ((sub * NS_PER_SEC) >> 32);
}

/* A timestamp field as CLOCK_TAI nanoseconds. */
static __always_inline __u64 timestamp_tai_ns(const __u8 *p, int ptp,
					      __s32 tai_offset)
{
	__u64 ns = timestamp_ns(p, ptp);

	if (ptp)
		return ns;
	return ns - NTP_UNIX_OFFSET * NS_PER_SEC +
	       (__u64)((__s64)tai_offset * (__s64)NS_PER_SEC);
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1)
		r += 1;
	return r;
}

/* bench.h histogram bucket of v nanoseconds (mirrored by gen::abi). */
static __always_inline __u32 bucket_of(__u64 v)
{
	if (v < (2ULL << BENCH_HIST_SUB_BITS))
		return (__u32)v;
	__u32 e = log2_u64(v);

	if (e > BENCH_HIST_MAX_EXP)
		return BENCH_HIST_BUCKETS - 1;
	__u32 shift = e - BENCH_HIST_SUB_BITS;

	return ((shift) << BENCH_HIST_SUB_BITS) + (__u32)(v >> shift);
}

static __always_inline void hist_add(__u32 kind, __u64 v)
{
	struct bench_hist *h = bpf_map_lookup_elem(&hist, &kind);

	if (!h)
		return;
	__u32 b = bucket_of(v);

	if (b >= BENCH_HIST_BUCKETS)
		b = BENCH_HIST_BUCKETS - 1;
	h->b[b] += 1;
}

/* ---- generator ----------------------------------------------------------- */

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_gen_cfg *cfg = bpf_map_lookup_elem(&gen_cfg, &zero);
	struct bench_gen_stats *st = bpf_map_lookup_elem(&gen_stats, &zero);
	struct bench_frame *tpl = bpf_map_lookup_elem(&template, &zero);

	if (!cfg || !st || !tpl)
		return XDP_ABORTED;

	__u64 now = bpf_ktime_get_ns();

	if (cfg->stop_ns && now >= cfg->stop_ns) {
		st->idle += 1;
		return XDP_DROP;
	}
	__u64 iv = cfg->interval_fp;

	if (iv) {
		__u64 now_fp = now << 16;

		if (st->epoch != cfg->epoch || !st->next_fp) {
			st->epoch = cfg->epoch;
			st->next_fp = now_fp;
		}
		if (now_fp < st->next_fp) {
			st->idle += 1;
			return XDP_DROP;
		}
		__u64 lag = iv * (cfg->max_burst ? cfg->max_burst : 1);

		if (now_fp - st->next_fp > lag)
			st->next_fp = now_fp - lag;
		st->next_fp += iv;
	}

	__u32 len = cfg->frame_len;
	__u32 l4 = cfg->l4_off;

	if (len < 14 || len > BENCH_FRAME_MAX || l4 > 128 || l4 + 8 > len)
		goto bad;
	if (ctx->data_end - ctx->data != len)
		goto bad;
	if (bpf_xdp_store_bytes(ctx, 0, tpl->b, len))
		goto bad;

	__u32 slots = cfg->slots ? cfg->slots : 1;
	__u64 n = st->next++;
	__u32 seq = (__u32)n * slots + bpf_get_smp_processor_id() % slots;
	__u32 payload = l4 + 8;
	__u64 sum = 0; /* partial sum of the octets written over zeros */
	__s64 d;

	/* The template holds zeros wherever the fields below go, and its UDP
	 * checksum covers that content, so the update is the plain sum of
	 * the new octets (RFC 1624). All fields sit at even offsets of the
	 * UDP payload, itself at an even offset from the UDP header. */
	__u32 plen = cfg->pool_len;

	if (plen) {
		__u32 k = seq & (BENCH_SLOTS - 1);
		struct bench_pool_entry *e = bpf_map_lookup_elem(&pool, &k);

		if (!e || plen > BENCH_POOL_MAX || (plen & 3))
			goto bad;
		if (bpf_xdp_store_bytes(ctx, payload, e->b, plen))
			goto bad;
		d = bpf_csum_diff(0, 0, (__be32 *)e->b, plen, 0);
		if (d < 0)
			goto bad;
		sum += (__u64)d;
	}

	__u32 off = cfg->seq_off;

	if (off != BENCH_NONE) {
		__u8 b[4];

		put_be32(b, seq);
		if (bpf_xdp_store_bytes(ctx, payload + off, b, 4))
			goto bad;
		d = bpf_csum_diff(0, 0, (__be32 *)b, 4, 0);
		if (d < 0)
			goto bad;
		sum += (__u64)d;
	}
	off = cfg->t1_off;
	if (off != BENCH_NONE) {
		__u8 b[8];

		put_timestamp(b, bpf_ktime_get_tai_ns(), cfg->t1_ptp,
			      cfg->tai_offset);
		if (bpf_xdp_store_bytes(ctx, payload + off, b, 8))
			goto bad;
		d = bpf_csum_diff(0, 0, (__be32 *)b, 8, 0);
		if (d < 0)
			goto bad;
		sum += (__u64)d;
	}

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + l4;

	if ((void *)(udp + 1) > data_end)
		goto bad;
	/* IPv4 UDP may go without a checksum (0); IPv6 never does. */
	if (udp->check) {
		__u16 c = fold((__u64)(__u16)~udp->check + sum);

		c = ~c;
		udp->check = c ? c : 0xffff;
	}

	__u32 k = seq & (BENCH_SLOTS - 1);
	__u64 *t = bpf_map_lookup_elem(&send_ns, &k);

	if (t)
		*t = bpf_ktime_get_ns();
	st->frames += 1;
	st->bytes += len;
	return XDP_TX;
bad:
	st->errors += 1;
	return XDP_ABORTED;
}

/* ---- counter ------------------------------------------------------------- */

static __always_inline int load8(struct xdp_md *ctx, __u32 at, __u8 *out)
{
	return bpf_xdp_load_bytes(ctx, at, out, 8);
}

SEC("xdp")
int bench_count(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_cnt_cfg *cfg = bpf_map_lookup_elem(&cnt_cfg, &zero);
	struct bench_cnt_stats *st = bpf_map_lookup_elem(&cnt_stats, &zero);

	if (!cfg || !st)
		return XDP_PASS;

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l4;

	if ((void *)(eth + 1) > data_end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_UDP)
			goto pass;
		l4 = sizeof(*eth) + (iph->ihl & 0xf) * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			goto pass;
		l4 = sizeof(*eth) + sizeof(*ip6);
	} else {
		goto pass;
	}
	if (l4 < 34 || l4 > 74)
		goto pass;

	struct udphdr *udp = data + l4;

	if ((void *)(udp + 1) > data_end)
		goto pass;
	if (udp->dest != bpf_htons(cfg->local_port) ||
	    udp->source != bpf_htons(cfg->remote_port))
		goto pass;

	__u64 now = bpf_ktime_get_ns();
	__u64 now_tai = bpf_ktime_get_tai_ns();
	__u32 payload = l4 + 8;
	__u8 m = cfg->measure;
	__u8 b[8];
	__u8 b2[8];

	st->packets += 1;
	st->bytes += (__u64)(data_end - data);

	int have_seq = 0;
	__u32 seq = 0;

	if (cfg->seq_off != BENCH_NONE) {
		if (bpf_xdp_load_bytes(ctx, payload + cfg->seq_off, b, 4) == 0) {
			seq = get_be32(b);
			have_seq = 1;
		} else {
			st->short_pkts += 1;
		}
	}
	if ((m & BENCH_M_SEQ) && have_seq) {
		if (st->last_seq && (__s16)(__u16)(seq - (__u32)st->last_seq) < 0)
			st->reordered += 1;
		else
			st->last_seq = (__u64)seq | (1ULL << 32);
	}
	if (m & BENCH_M_RTT) {
		__u64 rtt = 0;
		int ok = 0;

		if (have_seq) {
			__u32 k = seq & (BENCH_SLOTS - 1);
			__u64 *t = bpf_map_lookup_elem(&send_ns, &k);

			if (t && *t && *t <= now) {
				rtt = now - *t;
				ok = 1;
			}
		} else if (cfg->t1_off != BENCH_NONE) {
			if (load8(ctx, payload + cfg->t1_off, b) == 0) {
				__u64 t1 = timestamp_tai_ns(b, cfg->t1_ptp,
							    cfg->tai_offset);
				if (t1 <= now_tai) {
					rtt = now_tai - t1;
					ok = 1;
				}
			} else {
				st->short_pkts += 1;
			}
		}
		if (ok) {
			hist_add(BENCH_HIST_RTT, rtt);
			st->rtt_samples += 1;
		}
	}
	if ((m & BENCH_M_RESIDENCE) && cfg->t2_off != BENCH_NONE &&
	    cfg->t3_off != BENCH_NONE && cfg->ee_off != BENCH_NONE) {
		__u8 ee[2];

		if (bpf_xdp_load_bytes(ctx, payload + cfg->ee_off, ee, 2) == 0 &&
		    load8(ctx, payload + cfg->t2_off, b) == 0 &&
		    load8(ctx, payload + cfg->t3_off, b2) == 0) {
			int ptp = (ee[0] << 8 | ee[1]) & EE_Z;
			__u64 t2 = timestamp_ns(b, ptp);
			__u64 t3 = timestamp_ns(b2, ptp);

			if (t3 >= t2) {
				hist_add(BENCH_HIST_RESIDENCE, t3 - t2);
				st->res_samples += 1;
			} else {
				st->negative += 1;
			}
		} else {
			st->short_pkts += 1;
		}
	}
	/* Does the reply carry what a reflector must fill in? Its own
	 * sequence number (the highest seen tells how far it counted) and
	 * nonzero T2 and T3 (RFC 5357 §4.2.1, RFC 8762 §4.3). */
	if (cfg->rseq_off != BENCH_NONE) {
		if (bpf_xdp_load_bytes(ctx, payload + cfg->rseq_off, b, 4) == 0) {
			__u64 top = (__u64)get_be32(b) + 1;

			if (top > st->rseq_top)
				st->rseq_top = top;
		} else {
			st->short_pkts += 1;
		}
	}
	if (cfg->t2_off != BENCH_NONE && cfg->t3_off != BENCH_NONE) {
		if (load8(ctx, payload + cfg->t2_off, b) == 0 &&
		    load8(ctx, payload + cfg->t3_off, b2) == 0) {
			__u64 v2, v3;

			__builtin_memcpy(&v2, b, 8);
			__builtin_memcpy(&v3, b2, 8);
			if (v2 == 0 || v3 == 0)
				st->zero_ts += 1;
		}
	}
	return XDP_DROP;
pass:
	st->passed += 1;
	return XDP_PASS;
}

/* ---- ceiling and pass ---------------------------------------------------- */

SEC("xdp")
int bench_ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_UDP ||
		    iph->ihl < 5)
			return XDP_PASS;
		udp = (void *)iph + (iph->ihl & 0xf) * 4;
		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		__be32 a = iph->saddr;

		iph->saddr = iph->daddr;
		iph->daddr = a;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		struct in6_addr a = ip6->saddr;

		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
	} else {
		return XDP_PASS;
	}
	/* Swapping addresses and ports leaves every checksum valid. */
	__be16 p = udp->source;

	udp->source = udp->dest;
	udp->dest = p;

	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	return XDP_TX;
}

SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
