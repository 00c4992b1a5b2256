/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench.h: everything the benchmark's BPF programs share with user space
 * (bench/src/gen/abi.rs mirrors it; its tests check every size against the
 * map definitions of the compiled object).
 *
 * Conventions: ports in host byte order; offsets are into the UDP payload
 * (the TWAMP/STAMP packet); BENCH_NONE marks an absent field.
 */
#ifndef BENCH_H
#define BENCH_H

#include <linux/types.h>

#define BENCH_NONE 0xffff

/* Largest frame the generator sends (Ethernet header + 1500 + slack). */
#define BENCH_FRAME_MAX 1536
/* Largest protected test-packet prefix copied from the pool per frame: the
 * STAMP authenticated sender packet (112 octets, RFC 8762 §4.2.2). */
#define BENCH_POOL_MAX 112
/* Pool entries and send-time slots: sequence numbers are reduced modulo
 * this (a power of two). */
#define BENCH_SLOTS 65536

/* Latency histogram: log-linear buckets, exact below 2^(SUB_BITS+1) ns,
 * then 2^SUB_BITS buckets per power of two (relative width 1/32, ~3 %),
 * up to 2^BENCH_HIST_MAX_EXP ns (~18 minutes); larger values land in the
 * last bucket. */
#define BENCH_HIST_SUB_BITS 5
#define BENCH_HIST_MAX_EXP 40
#define BENCH_HIST_BUCKETS \
	((BENCH_HIST_MAX_EXP - BENCH_HIST_SUB_BITS + 2) << BENCH_HIST_SUB_BITS)

/* Keys of the `hist` map. */
#define BENCH_HIST_RTT 0       /* round trip: T4 - T1 (sender clock) */
#define BENCH_HIST_RESIDENCE 1 /* reflector residence: T3 - T2 */
#define BENCH_HIST_KINDS 2

/* bench_cnt_cfg.measure bits */
#define BENCH_M_RTT 1
#define BENCH_M_RESIDENCE 2
#define BENCH_M_SEQ 4

/* Generator configuration (`gen_cfg[0]`). */
struct bench_gen_cfg {
	__u16 frame_len;  /* octets of `template` sent per frame */
	__u16 l4_off;     /* offset of the UDP header in the frame */
	__u16 seq_off;    /* where the sender sequence number goes, or NONE */
	__u16 t1_off;     /* where T1 goes, or NONE */
	__u16 pool_len;   /* octets copied from the pool entry to payload 0 */
	__u8 t1_ptp;      /* T1 in PTPv2 truncated format (else NTP) */
	__u8 pad;
	__u32 slots;      /* generator CPUs: seq = n * slots + cpu % slots */
	__s32 tai_offset; /* TAI - UTC, seconds (NTP timestamps) */
	__u32 max_burst;  /* frames a late generator may send back to back */
	__u32 epoch;      /* changed per trial: restarts the schedule */
	__u64 interval_fp; /* ns between frames << 16 (0: as fast as possible) */
	__u64 stop_ns;    /* CLOCK_MONOTONIC end of sending (0: never) */
};

/* Per-CPU generator counters (`gen_stats[0]`). */
struct bench_gen_stats {
	__u64 frames;     /* frames built and returned with XDP_TX */
	__u64 bytes;      /* their octets (Ethernet header onwards) */
	__u64 next;       /* this CPU's frame counter n */
	__u64 errors;     /* frames aborted (bad configuration) */
	__u64 idle;       /* iterations dropped by the rate schedule */
	__u64 next_fp;    /* next send time (ns << 16) on this CPU */
	__u64 epoch;      /* cfg epoch next_fp belongs to */
};

/* Counter configuration (`cnt_cfg[0]`). */
struct bench_cnt_cfg {
	__u16 local_port;  /* the generator's source port (reply dst) */
	__u16 remote_port; /* the reflector's port (reply src) */
	__u16 seq_off;     /* sender sequence number readable in the reply */
	__u16 t1_off;      /* T1 readable in the reply (used without seq) */
	__u16 t2_off;      /* reflector receive timestamp, or NONE */
	__u16 t3_off;      /* reflector transmit timestamp, or NONE */
	__u16 ee_off;      /* Error Estimate covering T2/T3 (Z bit) */
	__u8 measure;      /* BENCH_M_* */
	__u8 t1_ptp;       /* format of T1 in the reply */
	__s32 tai_offset;  /* TAI - UTC, seconds (NTP timestamps) */
	__u16 rseq_off;    /* reflector's own sequence number, or NONE */
	__u16 pad;
};

/* Per-CPU counter statistics (`cnt_stats[0]`). */
struct bench_cnt_stats {
	__u64 packets;     /* replies of the flow, dropped here */
	__u64 bytes;       /* their octets (Ethernet header onwards) */
	__u64 rtt_samples;
	__u64 res_samples;
	__u64 short_pkts;  /* replies too short for a configured field */
	__u64 reordered;   /* sender seq below this CPU's previous one */
	__u64 last_seq;    /* previous sender seq + 1 (0: none yet) */
	__u64 negative;    /* residence samples with T3 < T2 */
	__u64 passed;      /* frames that are not the flow's, passed */
	__u64 rseq_top;    /* highest reflector sequence number seen + 1 */
	__u64 zero_ts;     /* replies whose T2 or T3 is all zeros */
};

struct bench_hist {
	__u64 b[BENCH_HIST_BUCKETS];
};

struct bench_frame {
	__u8 b[BENCH_FRAME_MAX];
};

struct bench_pool_entry {
	__u8 b[BENCH_POOL_MAX];
};

#endif
