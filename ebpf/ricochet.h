/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ricochet.h: the ONE declaration of everything the XDP program shares with
 * user space (map keys and values, clock state, counters, AF_XDP metadata).
 *
 * The Rust mirror lives in reflector/src/bpf/abi.rs; a test there checks
 * every size and offset against the types libbpf-cargo generates from this
 * header's BTF. Change both together.
 *
 * Conventions (all maps):
 *   - addresses and UDP ports are stored in NETWORK byte order, exactly as
 *     they appear on the wire; an IPv4 address occupies addr[0..4] and
 *     addr[4..16] is zero;
 *   - every other integer is in host byte order;
 *   - explicit padding fields are named _pad* and must be zero.
 */
#ifndef RICOCHET_H
#define RICOCHET_H

#include <linux/types.h>
#include <linux/bpf.h>

/* Address family tag used in keys (not AF_INET/AF_INET6, which differ
 * between systems; these are the IP version numbers). */
#define RC_FAMILY_IPV4 4
#define RC_FAMILY_IPV6 6

/* ---- sessions: (local, remote) 5-tuple -> rc_entry ---------------------- */

/* Key of the `sessions` hash map: one provisioned test session, seen from
 * the reflector (local = destination of the received test packet). */
struct rc_session_key {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__be16 local_port;
	__be16 remote_port;
	__u8 family; /* RC_FAMILY_* */
	__u8 _pad[3];
};

/* Key of the `listeners` hash map: a stateless TWAMP-Light / STAMP listener.
 * local_addr all-zero means "any local address of that family"; an exact
 * address entry wins over the wildcard. */
struct rc_listener_key {
	__u8 local_addr[16];
	__be16 local_port;
	__u8 family; /* RC_FAMILY_* */
	__u8 _pad;
};

/* rc_entry.mode */
enum rc_mode {
	/* Unauthenticated / mixed-mode TWAMP (RFC 5357 §4.2.1, RFC 5618):
	 * reflected in XDP; 41-octet reflector header (44 with RFC 7750). */
	RC_MODE_TWAMP = 1,
	/* Unauthenticated STAMP (RFC 8762 §4.3): reflected in XDP; 44-octet
	 * base packet, symmetric size, SSID copied. */
	RC_MODE_STAMP = 2,
	/* Authenticated or encrypted TWAMP, authenticated STAMP: handed to the
	 * AF_XDP socket of the receiving queue with rc_xdp_meta. */
	RC_MODE_SECURED = 3,
};

/* rc_entry.flags */
enum rc_flags {
	/* RFC 8186: T2/T3 in PTPv2 truncated format, Z bit set. */
	RC_F_PTP = 1 << 0,
	/* RFC 7750 DSCP and ECN Monitoring (TWAMP only): S-DSCP-ECN at octet 41,
	 * reflector header 44 octets. STAMP reflects it through its CoS TLV
	 * in user space instead. */
	RC_F_DSCP_ECN = 1 << 1,
	/* RFC 6038 Symmetrical Size (TWAMP only): the sender's padding starts
	 * after rc_entry.sender_mbz MBZ octets (octet 14 + sender_mbz). */
	RC_F_SYMMETRICAL = 1 << 2,
	/* RFC 6038 Reflect Octets: the first reflect_octets octets of the
	 * sender padding must come back at the start of the reflector padding;
	 * a packet too short to carry them is dropped (bad length). */
	RC_F_REFLECT_OCTETS = 1 << 3,
	/* Send with rc_entry.dscp (Type-P, RFC 5357 §3.5) instead of the
	 * received DSCP. */
	RC_F_SET_DSCP = 1 << 4,
	/* STAMP: packets longer than the 44-octet base (they carry RFC 8972
	 * TLVs) go to the AF_XDP socket instead of being reflected opaquely. */
	RC_F_TLV_TO_XSK = 1 << 5,
	/* STAMP (RFC 8972 §3): drop packets whose SSID (octets 14-15, the
	 * unauthenticated layout) differs from rc_entry.ssid. RC_MODE_STAMP
	 * entries only; not valid on RC_MODE_SECURED ones (the pollers check
	 * the SSID of secured STAMP sessions at their layout's offset). */
	RC_F_CHECK_SSID = 1 << 6,
	/* The entry's test traffic is carried in an ESP SA (RFC 4301
	 * PROTECT): the same packets arriving in clear are dropped
	 * (RC_CNT_DROP_NOT_ESP), never reflected. */
	RC_F_ESP_ONLY = 1 << 7,
	/* Secured entries: a packet the token bucket refuses still goes to
	 * the AF_XDP socket, marked RC_ORIGIN_F_REFUSED, only so that the
	 * poller counts it (STAMP Direct Measurement R_RxC counts every
	 * packet received, RFC 8972 §4.5); it is never answered, and dropped
	 * when the queue has no socket. Not counted as redirected. */
	RC_F_XSK_REFUSED = 1 << 8,
};

/* Per-entry counters, updated with atomic adds by every CPU. */
struct rc_entry_stats {
	__u64 rx_packets;    /* matched this entry */
	__u64 reflected;     /* XDP_TX */
	__u64 redirected;    /* XDP_REDIRECT to an AF_XDP socket */
	__u64 rate_limited;  /* dropped by the token bucket */
	__u64 bad_length;    /* dropped: too short for the mode */
	__u64 rx_bytes;      /* UDP payload octets matched */
};

/* Value of both `sessions` and `listeners`. In `sessions` the entry is a
 * stateful reflector (own sequence counter); in `listeners` it is stateless
 * (the received sequence number is copied, RFC 8762 §4.2 / RFC 5357 §4.2.1).
 *
 * Written by the control plane; `seq`, the token bucket state (`tokens`,
 * `last_ns`) and `stats` are owned by the data plane afterwards. */
struct rc_entry {
	/* Protects the token bucket (tokens, last_ns) only. Must stay the first
	 * top-level field; user space writes skip it (kernel copy_map_value). */
	struct bpf_spin_lock lock;
	/* Next reflector sequence number (stateful), __sync_fetch_and_add. */
	__u32 seq;
	/* Incremented by the control plane on every change of this entry;
	 * AF_XDP pollers re-read keys when the metadata shows a newer one. */
	__u32 generation;
	/* Session slot id handed to AF_XDP pollers (index into their caches). */
	__u32 slot;
	__u8 mode;           /* enum rc_mode */
	__u8 dscp;           /* DSCP (0..63) sent when RC_F_SET_DSCP */
	__u16 flags;         /* enum rc_flags */
	__u16 reflect_octets;/* RFC 6038 Reflect Octets length L */
	__u8 sender_mbz;     /* RFC 6038/7750 symmetrical sender MBZ (27/28/30) */
	__u8 _pad0;
	__u16 ssid;          /* RFC 8972 SSID, host order, with RC_F_CHECK_SSID */
	__u16 _pad1;
	/* Token bucket (anti-amplification, RFC 5357 §4.2 "MUST NOT reflect
	 * at a higher rate"): rate_pps == 0 means unlimited. */
	__u32 rate_pps;      /* refill rate, packets per second */
	__u32 burst;         /* bucket depth, packets (>= 1) */
	__u64 tokens;        /* current fill, nano-packets (1e9 = 1 packet) */
	__u64 last_ns;       /* CLOCK_TAI ns of the last refill */
	struct rc_entry_stats stats;
};

/* ---- clock: single-entry array written by housekeeping ------------------ */

/* rc_clock.flags */
enum rc_clock_flags {
	/* Take T2 from the NIC (bpf_xdp_metadata_rx_timestamp) when the
	 * program is device-bound and the driver returns one. The PHC is
	 * assumed to run on TAI (ptp4l default). */
	RC_CLOCK_NIC_RX = 1 << 0,
};

struct rc_clock {
	/* TAI - UTC in seconds, from adjtimex(2) `tai`: the same offset the
	 * kernel applies to CLOCK_TAI, so UTC = CLOCK_TAI - tai_offset. */
	__s32 tai_offset;
	/* RFC 4656 §4.1.2 Error Estimate (host order) for T2/T3: S, Scale,
	 * Multiplier. The Z bit is ignored (set per session); a Multiplier of
	 * 0 is replaced by 1 (RFC 4656: 0 is invalid). */
	__u16 error_estimate;
	__u16 flags;         /* enum rc_clock_flags */
	__u64 updated_ns;    /* CLOCK_TAI ns of the last update (diagnostics) */
};

/* ---- per-CPU counters, indexed by reason ------------------------------- */

enum rc_counter {
	RC_CNT_PASS_NOT_UDP = 0,      /* non-IP, non-UDP: passed untouched */
	RC_CNT_PASS_NO_MATCH = 1,     /* UDP, unknown session: passed */
	RC_CNT_PASS_MALFORMED = 2,    /* truncated/invalid L2-L4, fragment: passed */
	RC_CNT_PASS_NOT_UNICAST = 3,  /* multicast/broadcast address: passed */
	RC_CNT_REFLECTED = 4,         /* XDP_TX */
	RC_CNT_REDIRECTED = 5,        /* XDP_REDIRECT to an AF_XDP socket */
	RC_CNT_REDIRECT_NO_XSK = 6,   /* secured but no socket on the queue: passed */
	RC_CNT_DROP_BAD_LENGTH = 7,   /* known session, payload too short */
	RC_CNT_DROP_RATE_LIMITED = 8, /* token bucket empty */
	RC_CNT_DROP_SSID = 9,         /* STAMP SSID mismatch */
	RC_CNT_ERROR = 10,            /* helper failure (no tailroom, ...): passed */
	RC_CNT_ESP_REDIRECTED = 11,   /* ESP of a known inbound SA to AF_XDP */
	RC_CNT_ESP_UNKNOWN_SPI = 12,  /* ESP (raw or in UDP 4500), unknown SPI: passed */
	RC_CNT_ESP_IKE = 13,          /* UDP 4500 with the non-ESP marker (IKE) or
				       * a NAT keepalive: passed to the stack */
	RC_CNT_DROP_NOT_ESP = 14,     /* clear packet of an ESP-only entry: dropped */
	RC_CNT_MAX = 15,
};

/* ---- metadata in front of frames redirected to AF_XDP ------------------ */

#define RC_META_MAGIC 0x52434d31 /* "RCM1" */

enum rc_ts_source {
	RC_TS_KERNEL_TAI = 1, /* bpf_ktime_get_tai_ns() at XDP entry */
	RC_TS_NIC = 2,        /* bpf_xdp_metadata_rx_timestamp() (PHC) */
};

enum rc_origin {
	RC_ORIGIN_SESSION = 1,
	RC_ORIGIN_LISTENER = 2,
	/* ESP of a known inbound SA (raw IP protocol 50 or ESP-in-UDP, RFC
	 * 3948): slot/generation are the `esp_sas` value's (an `esp_keys`
	 * index), payload_off is the offset of the ESP header (the SPI). */
	RC_ORIGIN_ESP = 3,
};

/* Flag bit in rc_xdp_meta.origin: refused by the token bucket, handed over
 * to be counted only (RC_F_XSK_REFUSED). */
#define RC_ORIGIN_F_REFUSED 0x80

/* Written with bpf_xdp_adjust_meta directly in front of the frame
 * (data_meta .. data); 24 octets (kernel limit 32, multiple of 4). */
struct rc_xdp_meta {
	__u64 rx_ts_ns;      /* T2, TAI nanoseconds */
	__u32 slot;          /* rc_entry.slot */
	__u32 generation;    /* rc_entry.generation */
	__u16 payload_off;   /* offset of the UDP payload in the frame */
	__u8 ts_source;      /* enum rc_ts_source */
	__u8 origin;         /* enum rc_origin | RC_ORIGIN_F_REFUSED */
	__u32 magic;         /* RC_META_MAGIC, last: adjacent to the frame */
};

/* ---- keys: per-slot secured-session state for the AF_XDP pollers ------- */

/* rc_keys.mode: how the poller verifies and protects a slot's packets. */
enum rc_key_mode {
	RC_KEYS_NONE = 0,       /* slot unused: its packets are dropped */
	RC_KEYS_TWAMP_AUTH = 1, /* RFC 5357 mode 2: key = AES-128 ‖ HMAC-SHA1 */
	RC_KEYS_TWAMP_ENC = 2,  /* RFC 5357 mode 4: key = AES-128 ‖ HMAC-SHA1 */
	RC_KEYS_STAMP_AUTH = 3, /* RFC 8762 §4.1.1: key[0..32] = HMAC-SHA-256 */
	/* Stateful STAMP session (RFC 8762 §4.3, RFC 8972 §3) reflected in user
	 * space (TLVs, Follow-Up from TX completions): SSID in rc_keys.ssid. */
	RC_KEYS_STAMP_SESSION = 4,      /* unauthenticated */
	RC_KEYS_STAMP_SESSION_AUTH = 5, /* key[0..32] = HMAC-SHA-256 */
	/* Stateless unauthenticated STAMP listener: its TLV-bearing packets
	 * (RC_F_TLV_TO_XSK), whose TLVs need user-space processing, or its
	 * packets carried inside an ESP SA. */
	RC_KEYS_STAMP_OPEN = 6,
	/* Unauthenticated TWAMP session carried inside an ESP SA (ESP protects
	 * it): reflected by a poller after decryption. No key. */
	RC_KEYS_TWAMP_OPEN = 7,
};

/* Octets of rc_keys.key: the per-SID Test AES key (16) then the Test HMAC
 * key (32), in Token order (RFC 4656 §3.1, §4.1.2); or a 32-octet STAMP
 * HMAC key followed by 16 zero octets. STAMP sessions (RC_KEYS_STAMP_
 * SESSION*) use the tail: [32..40) Class of Service policy (u64, bit n =
 * DSCP n permitted, RFC 8972 §4.4), [40..42) RFC 9534 Reflector
 * Micro-session ID (u16), [42] bit 0 = that ID is set; host order. */
#define RC_KEY_LEN 48

/* Value of the `keys` array, indexed by rc_entry.slot. Written by the
 * control plane (keys first, then the sessions/listeners entry that points
 * at the slot); read only by the AF_XDP pollers, which cache it per worker
 * and re-read it when the metadata's generation differs from the cached
 * one. The XDP program never reads it (no key material in the kernel path).
 * A slot that is freed is overwritten with zeros (mode RC_KEYS_NONE). */
struct rc_keys {
	/* rc_entry.generation this state belongs to: a packet is processed
	 * only when its metadata carries the same generation. */
	__u32 generation;
	/* Changes whenever a NEW session takes the slot. A new generation with
	 * the same instance and otherwise identical values keeps the pollers'
	 * session state (the reflector's own sequence counter, RFC 5357
	 * §4.2.1); any other change rebuilds it, numbering from 0 again. */
	__u32 instance;
	__u8 mode;            /* enum rc_key_mode */
	__u8 dscp;            /* DSCP (0..63) sent when RC_F_SET_DSCP */
	__u16 flags;          /* enum rc_flags: PTP, DSCP_ECN, SYMMETRICAL,
			       * REFLECT_OCTETS, SET_DSCP */
	__u16 reflect_octets; /* RFC 6038 Reflect Octets length L */
	__u8 sender_mbz;      /* RFC 6038 symmetrical sender MBZ (27/28/30,
			       * 56/64 authenticated) */
	__u8 sender_family;   /* RC_FAMILY_*; 0: no source check (listener) */
	/* The Session-Sender (RFC 5357 §4.2: packets from anywhere else are
	 * not reflected), network byte order. */
	__u8 sender_addr[16];
	__be16 sender_port;
	__u16 ssid;           /* RFC 8972 SSID (host order), STAMP sessions */
	__u8 key[RC_KEY_LEN];
};

/* ---- ESP: inbound SAs (RFC 4303) handled by the AF_XDP pollers -------- */

/* The IKE NAT-T port (RFC 3948): UDP-encapsulated ESP, and IKE behind the
 * 4-octet zero non-ESP marker. */
#define RC_ESP_UDP_PORT 4500

/* Key of the `esp_sas` hash map: an inbound SA as the receiver identifies
 * it (RFC 4303 §2.1: SPI, and the destination address). */
struct rc_esp_sa_key {
	__be32 spi;          /* network byte order, as on the wire */
	__u8 family;         /* RC_FAMILY_* of the outer header */
	__u8 _pad[3];
	__u8 local_addr[16]; /* outer destination address */
};

/* rc_esp_sa.flags: which encapsulations the SA accepts. */
enum rc_esp_sa_flags {
	RC_ESP_F_RAW = 1 << 0, /* IP protocol 50 */
	RC_ESP_F_UDP = 1 << 1, /* ESP in UDP, destination port 4500 */
};

/* Value of `esp_sas`. Two entries may point at SAs of the same session
 * during a rekey (old and new inbound SPI both valid). */
struct rc_esp_sa {
	__u32 slot;          /* index into esp_keys / esp_state */
	__u32 generation;    /* == esp_keys[slot].generation */
	__u16 flags;         /* enum rc_esp_sa_flags */
	__u16 _pad0;
	__u32 _pad1;
	__u64 rx_packets;    /* matched (atomic adds) */
	__u64 redirected;    /* handed to an AF_XDP socket */
};

/* esp_keys.alg */
enum rc_esp_alg {
	RC_ESP_ALG_NONE = 0,            /* slot unused */
	RC_ESP_ALG_AES_GCM_16 = 1,      /* RFC 4106, ICV 16; key_len 16 or 32 */
	RC_ESP_ALG_AES_CBC_SHA256 = 2,  /* RFC 3602 + RFC 4868 HMAC-SHA-256-128 */
};

/* esp_keys.flags */
enum rc_esp_key_flags {
	RC_ESP_K_ESN = 1 << 0,     /* 64-bit Extended Sequence Numbers */
	RC_ESP_K_TUNNEL = 1 << 1,  /* tunnel mode (inner IP header); else transport */
	RC_ESP_K_UDP = 1 << 2,     /* replies ESP-in-UDP (RFC 3948); else raw ESP */
};

/* Octets of each direction's key block: the cipher key (16 or 32) at 0,
 * then at 32 the 4-octet GCM salt or the 32-octet HMAC-SHA-256 key. */
#define RC_ESP_KEY_LEN 64

/* Value of the `esp_keys` array (per ESP SA slot), read only by the AF_XDP
 * pollers (cached per worker by generation, like `keys`); the XDP program
 * never reads it. Written by the control plane before the `esp_sas` entry
 * that points at it; zeroed (alg NONE) when the SA is removed. */
struct rc_esp_keys {
	__u32 generation;
	/* New for every new SA in the slot: pollers rebuild the SA state
	 * (replay window) when it changes. */
	__u32 instance;
	__u32 spi_in;        /* host order */
	__u32 spi_out;       /* host order: the outbound SA's SPI */
	__u8 alg;            /* enum rc_esp_alg (both directions) */
	__u8 key_len;        /* cipher key octets: 16 or 32 */
	__u8 flags;          /* enum rc_esp_key_flags */
	__u8 _pad0;
	__u32 replay_window; /* packets; 0 = anti-replay off (receiver's choice) */
	/* The inner TWAMP/STAMP session: its `keys` slot and generation
	 * (the pollers reflect the decrypted packet with that slot's state). */
	__u32 inner_slot;
	__u32 inner_generation;
	/* esp_state index whose tx_seq numbers the replies: the outbound SA
	 * (with key_out/spi_out: this SA's own, or a newer one's after a
	 * rekey it has switched to). */
	__u32 tx_state;
	/* Deferred outbound switch of a rekey (RFC 7296 §2.8): 1 + the
	 * esp_keys slot of the session's newest SA, 0 = none. Once that SA's
	 * esp_state.rx_packets is non-zero (a packet authenticated on the new
	 * inbound SPI, so the peer has the new SA), the pollers seal this
	 * SA's replies with that SA's outbound half and tx_state. */
	__u32 tx_next;
	/* Hard lifetimes (RFC 4301 §4.4.2.1): 0 = none. Packets and octets
	 * count both directions of this SA; expires_ns is CLOCK_TAI. The
	 * pollers raise rekey_needed at 90 % of the packet and octet limits
	 * and from rekey_ns on. */
	__u64 life_packets;
	__u64 life_bytes;
	__u64 expires_ns;
	/* CLOCK_TAI ns from which the pollers raise RC_ESP_REKEY_TIME (90 %
	 * of the time lifetime); 0 = none. */
	__u64 rekey_ns;
	/* Traffic selectors of the inner packets (RFC 4301 §4.4.1): the
	 * reflector's test address/port and the sender's; port 0 = any. */
	__u8 sel_local[16];
	__u8 sel_remote[16];
	__be16 sel_local_port;
	__be16 sel_remote_port;
	__u8 sel_family;     /* RC_FAMILY_* of the inner packets */
	__u8 _pad2[3];
	__u8 key_in[RC_ESP_KEY_LEN];
	__u8 key_out[RC_ESP_KEY_LEN];
};

/* rc_esp_state.rekey_needed bits (why). */
enum rc_esp_rekey {
	RC_ESP_REKEY_SEQ = 1 << 0,     /* sequence numbers near their end */
	RC_ESP_REKEY_PACKETS = 1 << 1, /* 90 % of life_packets */
	RC_ESP_REKEY_BYTES = 1 << 2,   /* 90 % of life_bytes */
	RC_ESP_REKEY_TIME = 1 << 3,    /* 90 % of the time to expires_ns */
	RC_ESP_REKEY_EXPIRED = 1 << 4, /* a hard limit passed: SA unusable */
};

/* Value of the `esp_state` array (BPF_F_MMAPABLE): per-SA counters and
 * the outbound sequence counter, updated by every poller with atomic
 * operations on the shared mapping (no syscall, no lock). Zeroed by the
 * control plane when it installs a new SA in the slot. Survives a
 * restart of the reflector, so sequence numbers (and so GCM IVs) are never
 * reused under one key. */
struct rc_esp_state {
	__u64 tx_seq;        /* last outbound sequence number used */
	__u64 rx_packets;    /* authenticated and accepted */
	__u64 rx_bytes;      /* their ESP octets */
	__u64 tx_packets;    /* replies sealed with this SA (tx_state) */
	__u64 tx_bytes;
	__u64 replay_drops;  /* refused by the anti-replay window */
	__u64 icv_failures;  /* ICV did not verify (or bad trailer) */
	__u64 seq_exhausted; /* replies not sent: outbound numbers used up */
	__u64 selector_drops;/* inner packet outside the traffic selectors */
	__u64 expired_drops; /* past a hard lifetime */
	__u64 rekey_needed;  /* enum rc_esp_rekey bits, set by the pollers */
	__u64 _reserved;
};

/* Map capacities. */
#define RC_MAX_SESSIONS 65536
#define RC_MAX_LISTENERS 1024
#define RC_MAX_QUEUES 256
/* Slots: every session and listener may have one. */
#define RC_MAX_SLOTS (RC_MAX_SESSIONS + RC_MAX_LISTENERS)
/* ESP SAs (inbound; each carries its outbound half). */
#define RC_MAX_ESP_SAS 4096

#endif /* RICOCHET_H */
