//! Loading the benchmark's BPF programs (`bench/ebpf/bench.bpf.c`, embedded
//! by `build.rs`), attaching them, and running the generator with
//! `BPF_PROG_TEST_RUN` in live-frames mode.
//!
//! The object is opened by name (not through a generated skeleton) so that
//! a loaded instance can live in an ordinary struct; each [`Role`] loads
//! only the programs it needs. Attach and live runs resolve interface
//! indexes in the calling thread's namespace: call them from a thread that
//! entered the lab namespace ([`super::netns`]).

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder, ProgramInput};
use thiserror::Error;

use super::abi::{
    CntCfg, CntStats, GenStats, HIST_BUCKETS, HIST_RESIDENCE, HIST_RTT, OBJECT, POOL_MAX, SLOTS,
};
use super::frame::Generated;

/// A failure of the BPF side.
#[derive(Debug, Error)]
pub enum BpfError {
    /// libbpf refused (verifier, attach, map access, test run).
    #[error("{what}: {source}")]
    Libbpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    /// A map value had an unexpected size or a map/program was missing.
    #[error("{0}")]
    Abi(String),
    /// BPF_PROG_TEST_RUN returned an error.
    #[error("BPF_PROG_TEST_RUN ({what}): {source}")]
    TestRun {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Libbpf { what, source }
}

/// Which programs an instance loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The sender side: generator and counter (they share `send_ns`).
    Sender,
    /// The ceiling reflector.
    Ceiling,
    /// The XDP_PASS stub.
    Pass,
}

impl Role {
    fn programs(self) -> &'static [&'static str] {
        match self {
            Role::Sender => &[PROG_GEN, PROG_COUNT],
            Role::Ceiling => &[PROG_CEILING],
            Role::Pass => &[PROG_PASS],
        }
    }
}

/// Program names in the object.
pub const PROG_GEN: &str = "bench_gen";
/// The sender-side counter.
pub const PROG_COUNT: &str = "bench_count";
/// The ceiling reflector.
pub const PROG_CEILING: &str = "bench_ceiling";
/// XDP_PASS.
pub const PROG_PASS: &str = "bench_pass";

/// XDP return codes.
pub const XDP_ABORTED: u32 = 0;
/// XDP_DROP
pub const XDP_DROP: u32 = 1;
/// XDP_PASS
pub const XDP_PASS: u32 = 2;
/// XDP_TX
pub const XDP_TX: u32 = 3;

/// `TEST_XDP_MAX_BATCH` (net/bpf/test_run.c): the largest live-frames batch.
pub const MAX_BATCH: u32 = 256;

/// A loaded instance of the object.
#[derive(Debug)]
pub struct Programs {
    obj: Object,
    role: Role,
}

impl Programs {
    /// Loads the programs of `role` (the verifier runs here). Roles other
    /// than [`Role::Sender`] shrink the pool and send-time maps to one entry.
    pub fn load(role: Role) -> Result<Programs, BpfError> {
        let mut open = ObjectBuilder::default()
            .name("ricochet_bench")
            .map_err(err("name object"))?
            .open_memory(OBJECT)
            .map_err(err("open the benchmark's BPF object"))?;
        if role != Role::Sender {
            for mut m in open.maps_mut() {
                if m.name() == "pool" || m.name() == "send_ns" {
                    m.set_max_entries(1).map_err(err("shrink unused map"))?;
                }
            }
        }
        for mut p in open.progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            p.set_autoload(role.programs().contains(&name.as_str()));
        }
        let obj = open.load().map_err(err(format!(
            "load {:?} programs (verifier log above)",
            role
        )))?;
        Ok(Programs { obj, role })
    }

    /// The role this instance was loaded for.
    pub fn role(&self) -> Role {
        self.role
    }

    fn map(&self, name: &str) -> Result<MapHandle, BpfError> {
        let m = self
            .obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| BpfError::Abi(format!("map {name} missing from object")))?;
        MapHandle::try_from(&m).map_err(err(format!("duplicate fd of map {name}")))
    }

    fn with_prog<T>(
        &self,
        name: &str,
        f: impl FnOnce(&libbpf_rs::ProgramMut<'_>) -> Result<T, BpfError>,
    ) -> Result<T, BpfError> {
        let p = self
            .obj
            .progs_mut()
            .find(|p| p.name() == name)
            .ok_or_else(|| BpfError::Abi(format!("program {name} not loaded")))?;
        f(&p)
    }

    /// Attaches program `name` to interface `ifindex` (of the calling
    /// thread's namespace) through a BPF link: native XDP where the driver
    /// has it (veth does). Dropping the link detaches.
    pub fn attach(&self, name: &str, ifindex: u32) -> Result<Link, BpfError> {
        self.with_prog(name, |p| {
            p.attach_xdp(ifindex as i32)
                .map_err(err(format!("attach {name} to ifindex {ifindex}")))
        })
    }

    /// Runs program `name` once on `frame` (plain BPF_PROG_TEST_RUN, no
    /// device): returns the XDP action and the frame afterwards.
    pub fn run_once(&self, name: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), BpfError> {
        self.with_prog(name, |p| {
            let mut out = vec![0u8; frame.len() + 256];
            let input = ProgramInput {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            };
            let o = p.test_run(input).map_err(err(format!("test run {name}")))?;
            let ret = o.return_value;
            let n = o.data.map_or(0, |d| d.len());
            out.truncate(n);
            Ok((ret, out))
        })
    }
}

/// The sender side: generator and counter with their maps.
#[derive(Debug)]
pub struct Sender {
    progs: Programs,
    gen_cfg: MapHandle,
    gen_stats: MapHandle,
    template: MapHandle,
    pool: MapHandle,
    cnt_cfg: MapHandle,
    cnt_stats: MapHandle,
    hist: MapHandle,
}

const KEY0: [u8; 4] = 0u32.to_ne_bytes();

impl Sender {
    /// Loads the generator and the counter.
    pub fn load() -> Result<Sender, BpfError> {
        let progs = Programs::load(Role::Sender)?;
        Ok(Sender {
            gen_cfg: progs.map("gen_cfg")?,
            gen_stats: progs.map("gen_stats")?,
            template: progs.map("template")?,
            pool: progs.map("pool")?,
            cnt_cfg: progs.map("cnt_cfg")?,
            cnt_stats: progs.map("cnt_stats")?,
            hist: progs.map("hist")?,
            progs,
        })
    }

    /// The loaded programs.
    pub fn programs(&self) -> &Programs {
        &self.progs
    }

    /// Installs a template frame, its configuration and its pool.
    pub fn configure_generator(&self, g: &Generated) -> Result<(), BpfError> {
        let mut tpl = vec![0u8; super::abi::FRAME_MAX];
        if g.frame.len() > tpl.len() {
            return Err(BpfError::Abi(format!("frame of {} octets", g.frame.len())));
        }
        tpl[..g.frame.len()].copy_from_slice(&g.frame);
        if !g.pool.is_empty() {
            // One batch update of all entries.
            let n = g.pool.len().min(SLOTS);
            let keys: Vec<u8> = (0..n as u32).flat_map(|k| k.to_ne_bytes()).collect();
            let vals: Vec<u8> = g.pool[..n].iter().flat_map(|e| e.iter().copied()).collect();
            debug_assert_eq!(vals.len(), n * POOL_MAX);
            self.pool
                .update_batch(&keys, &vals, n as u32, MapFlags::ANY, MapFlags::ANY)
                .map_err(err("fill the pool"))?;
        }
        self.template
            .update(&KEY0, &tpl, MapFlags::ANY)
            .map_err(err("write the template"))?;
        self.gen_cfg
            .update(&KEY0, &g.gen.to_bytes(), MapFlags::ANY)
            .map_err(err("write the generator configuration"))
    }

    /// Rewrites the generator configuration (per trial: schedule, stop time).
    pub fn write_gen_cfg(&self, cfg: &super::abi::GenCfg) -> Result<(), BpfError> {
        self.gen_cfg
            .update(&KEY0, &cfg.to_bytes(), MapFlags::ANY)
            .map_err(err("write the generator configuration"))
    }

    /// Installs the counter configuration and zeroes its statistics (a
    /// new flow: its reflector sequence numbers and order start afresh).
    pub fn configure_counter(&self, c: &CntCfg) -> Result<(), BpfError> {
        self.cnt_cfg
            .update(&KEY0, &c.to_bytes(), MapFlags::ANY)
            .map_err(err("write the counter configuration"))?;
        let zeros: Vec<Vec<u8>> = self
            .percpu(&self.cnt_stats, &KEY0, "cnt_stats")?
            .iter()
            .map(|v| vec![0u8; v.len()])
            .collect();
        self.cnt_stats
            .update_percpu(&KEY0, &zeros, MapFlags::ANY)
            .map_err(err("zero the counter statistics"))
    }

    /// Attaches the counter to the sender's interface.
    pub fn attach_counter(&self, ifindex: u32) -> Result<Link, BpfError> {
        self.progs.attach(PROG_COUNT, ifindex)
    }

    /// Sends `repeat` copies of the configured template out of interface
    /// `ifindex` (calling thread's namespace): BPF_PROG_TEST_RUN with
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`, the generator returning XDP_TX for each,
    /// in batches of `batch` frames (1..=[`MAX_BATCH`]). `frame` must have the
    /// template's length.
    pub fn run_live(
        &self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<(), BpfError> {
        self.progs.with_prog(PROG_GEN, |p| {
            let mut ctx = libbpf_rs::libbpf_sys::xdp_md {
                data: 0,
                data_end: frame.len() as u32,
                data_meta: 0,
                ingress_ifindex: ifindex,
                rx_queue_index: 0,
                egress_ifindex: 0,
            };
            // SAFETY: bpf_test_run_opts is plain old data; all-zero is its
            // documented default.
            let mut opts: libbpf_rs::libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
            opts.sz = std::mem::size_of_val(&opts) as _;
            opts.data_in = frame.as_ptr().cast();
            opts.data_size_in = frame.len() as u32;
            opts.ctx_in = (&mut ctx as *mut libbpf_rs::libbpf_sys::xdp_md).cast();
            opts.ctx_size_in = std::mem::size_of_val(&ctx) as u32;
            opts.repeat = repeat as i32;
            opts.flags = libbpf_rs::libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES;
            opts.batch_size = batch.clamp(1, MAX_BATCH);
            // SAFETY: `opts` points at `frame` and `ctx`, both alive and
            // unmodified for the duration of the call; no output buffers
            // are given (live mode forbids them); the fd is the loaded
            // program's.
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(p.as_fd().as_raw_fd(), &mut opts)
            };
            if rc < 0 {
                // libbpf returns -errno (libbpf_err); older versions -1 with errno.
                let code = if rc == -1 {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
                } else {
                    -rc
                };
                return Err(BpfError::TestRun {
                    what: "live frames",
                    source: std::io::Error::from_raw_os_error(code),
                });
            }
            Ok(())
        })
    }

    /// Generator counters summed over CPUs.
    pub fn gen_stats(&self) -> Result<GenStats, BpfError> {
        let mut sum = GenStats::default();
        for v in self.percpu(&self.gen_stats, &KEY0, "gen_stats")? {
            sum.add(&GenStats::from_bytes(&v).ok_or_else(|| short("gen_stats"))?);
        }
        Ok(sum)
    }

    /// Counter statistics summed over CPUs.
    pub fn cnt_stats(&self) -> Result<CntStats, BpfError> {
        let mut sum = CntStats::default();
        for v in self.percpu(&self.cnt_stats, &KEY0, "cnt_stats")? {
            sum.add(&CntStats::from_bytes(&v).ok_or_else(|| short("cnt_stats"))?);
        }
        Ok(sum)
    }

    /// Round-trip and residence histograms (bucket counts), summed over CPUs.
    pub fn histograms(&self) -> Result<(Vec<u64>, Vec<u64>), BpfError> {
        let read = |kind: u32| -> Result<Vec<u64>, BpfError> {
            let mut sum = vec![0u64; HIST_BUCKETS];
            for v in self.percpu(&self.hist, &kind.to_ne_bytes(), "hist")? {
                if v.len() < HIST_BUCKETS * 8 {
                    return Err(short("hist"));
                }
                for (s, c) in sum.iter_mut().zip(v.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    *s += u64::from_ne_bytes(b);
                }
            }
            Ok(sum)
        };
        Ok((read(HIST_RTT)?, read(HIST_RESIDENCE)?))
    }

    fn percpu(&self, m: &MapHandle, key: &[u8], name: &str) -> Result<Vec<Vec<u8>>, BpfError> {
        m.lookup_percpu(key, MapFlags::ANY)
            .map_err(err(format!("read {name}")))?
            .ok_or_else(|| BpfError::Abi(format!("{name}: no entry")))
    }
}

fn short(name: &str) -> BpfError {
    BpfError::Abi(format!("{name}: value shorter than the ABI"))
}
