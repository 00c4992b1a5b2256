//! The benchmark report: a Markdown table, JSON (serde) and PNG plots
//! (plotters: throughput against offered load, latency CDF), plus the
//! progress bar shown while it runs (indicatif).
//!
//! Throughput in Gbit/s is on the wire: every frame counted with its FCS
//! (4), padded to the 64-octet minimum, plus preamble/SFD (8) and the
//! inter-frame gap (12) (IEEE 802.3; RFC 2544 §20 counts frames the same
//! way).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::stats::Distribution;

/// FCS octets of an Ethernet frame.
pub const FCS: usize = 4;
/// Preamble, SFD and inter-frame gap per frame.
pub const WIRE_OVERHEAD: usize = 20;
/// Smallest Ethernet frame (with FCS).
pub const MIN_FRAME: usize = 64;

/// Bits one frame occupies on the wire; `frame_len` counts from the
/// Ethernet header to the end of the payload (no FCS).
pub fn wire_bits(frame_len: usize) -> u64 {
    ((frame_len + FCS).max(MIN_FRAME) + WIRE_OVERHEAD) as u64 * 8
}

/// Gbit/s on the wire of `pps` frames of `frame_len` octets.
pub fn wire_gbps(pps: f64, frame_len: usize) -> f64 {
    pps * wire_bits(frame_len) as f64 / 1e9
}

/// Settings and environment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// The command line.
    pub command: String,
    /// Start, seconds since the Unix epoch.
    pub started_unix: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Lab name.
    pub lab: String,
    /// Generator CPU.
    pub gen_core: Option<usize>,
    /// Reflector CPU.
    pub reflector_core: Option<usize>,
    /// Test mode of the ceiling and echo targets.
    pub mode: String,
    /// IPv6 instead of IPv4.
    pub ipv6: bool,
    /// The search settings.
    pub search: crate::search::SearchConfig,
    /// The generator settings.
    pub generator: crate::gen::trial::LiveConfig,
    /// Things the reader should know (sweeps skipped, fonts missing…).
    pub notes: Vec<String>,
}

/// Outcome of one target at one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Searched.
    Measured,
    /// Not measured, with the reason (not wired, no command…).
    Skipped,
    /// Set-up or a trial failed.
    Failed,
}

/// One trial, for the throughput plot and the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialPoint {
    pub phase: crate::search::Phase,
    pub requested_pps: f64,
    pub offered_pps: f64,
    pub received_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub loss_ratio: f64,
    pub passed: bool,
}

/// The result of a search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Highest rate with loss at or under the threshold, packets/s.
    pub throughput_pps: f64,
    /// The same on the wire.
    pub throughput_gbps: f64,
    /// Fraction of the target's ceiling at the same size.
    pub share_of_ceiling: Option<f64>,
    /// Loss of the deciding trial.
    pub loss_ratio: f64,
    /// Whether a confirming trial passed.
    pub confirmed: bool,
    /// Whether the generator, not the target, was the limit.
    pub generator_limited: bool,
    /// Round trip T4 − T1 of the deciding trial.
    pub rtt: Option<Distribution>,
    /// Reflector residence T3 − T2 of the deciding trial.
    pub residence: Option<Distribution>,
    /// CDF of the round trip: (ns, fraction).
    pub rtt_cdf: Vec<(f64, f64)>,
    /// Every trial.
    pub trials: Vec<TrialPoint>,
    /// Highest reflector sequence number read in the replies + 1, over
    /// every trial (0: not readable: echoes, encrypted block 0).
    pub reflector_seq_top: u64,
    /// Replies with an all-zero T2 or T3, over every trial.
    pub zero_timestamps: u64,
}

/// One of the goals evaluated on this run, at one packet size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// What is asked, e.g. `xdp / ceiling >= 0.9`.
    pub goal: String,
    /// The size (as the results name it) and its IP length.
    pub size: String,
    pub ip_len: usize,
    /// The figure: a ratio, or nanoseconds for latency goals.
    pub value: Option<f64>,
    /// `Some(true)`: met; `Some(false)`: missed; `None`: could not be
    /// evaluated (a side was not measured), see `detail`.
    pub met: Option<bool>,
    /// The figures behind it, or why it could not be evaluated.
    pub detail: String,
}

/// One target at one packet size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub description: String,
    pub ceiling: Option<String>,
    /// Test mode of its packets.
    pub mode: String,
    /// Size as asked (`min` or octets).
    pub size: String,
    /// IP packet length.
    pub ip_len: usize,
    /// Ethernet frame length without FCS.
    pub frame_len: usize,
    pub status: Status,
    /// Why skipped or failed, or remarks.
    pub note: Option<String>,
    pub measured: Option<Measured>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub results: Vec<TargetResult>,
    /// The goals, from [`Report::fill_goals`].
    pub goals: Vec<Goal>,
}

/// Ratio goals: (target, its ceiling, least share).
pub const RATIO_GOALS: [(&str, &str, f64); 4] = [
    ("xdp", "ceiling", 0.9),
    ("afxdp-auth", "afxdp-echo", 0.8),
    ("afxdp-enc", "afxdp-echo", 0.8),
    ("socket", "socket-echo", 0.8),
];
/// Reported, not a goal (issue 7): the AF_XDP path with ESP against the
/// plain AF_XDP path (authenticated TWAMP), at the same size label (the
/// smallest ESP frame is shorter than the smallest authenticated one).
pub const ESP_COMPARISON: (&str, &str) = ("afxdp-esp", "afxdp-auth");
/// Ricochet's XDP path against an external reflector (perfSONAR twampd).
pub const EXTERNAL_FACTOR: f64 = 100.0;
/// Reflector residence p99 on the XDP path, ns.
pub const XDP_RESIDENCE_P99_NS: i64 = 1_000;

impl Report {
    /// Fills `share_of_ceiling` of every measured result whose ceiling was
    /// measured at the same IP length.
    pub fn fill_shares(&mut self) {
        let ceilings: Vec<(String, usize, f64)> = self
            .results
            .iter()
            .filter_map(|r| {
                r.measured
                    .as_ref()
                    .map(|m| (r.target.clone(), r.ip_len, m.throughput_pps))
            })
            .collect();
        for r in &mut self.results {
            let Some(c) = r.ceiling.clone() else { continue };
            let ip_len = r.ip_len;
            if let Some(m) = r.measured.as_mut() {
                m.share_of_ceiling = ceilings
                    .iter()
                    .find(|(t, l, pps)| *t == c && *l == ip_len && *pps > 0.0)
                    .map(|(_, _, pps)| m.throughput_pps / pps);
            }
        }
    }

    fn measured(&self, target: &str, ip_len: usize) -> Option<&Measured> {
        self.results
            .iter()
            .find(|r| r.target == target && r.ip_len == ip_len)
            .and_then(|r| r.measured.as_ref())
    }

    /// Evaluates the goals (call after [`Report::fill_shares`]): each ratio
    /// of [`RATIO_GOALS`], the XDP path's replies carrying the reflector's
    /// sequence number and nonzero T2/T3, XDP against the external
    /// reflector, and the XDP residence p99, at every size the target was
    /// run at.
    pub fn fill_goals(&mut self) {
        let mut goals = Vec::new();
        // One evaluation per target and IP length (sizes below a mode's
        // minimum resolve to the same length).
        let mut runs: Vec<(String, String, usize)> = Vec::new();
        for r in &self.results {
            if !runs
                .iter()
                .any(|(t, _, l)| *t == r.target && *l == r.ip_len)
            {
                runs.push((r.target.clone(), r.size.clone(), r.ip_len));
            }
        }
        let mpps = |m: &Measured| format!("{:.3} Mpps", m.throughput_pps / 1e6);
        for (target, size, ip_len) in &runs {
            let (size, ip_len) = (size.clone(), *ip_len);
            let mine = self.measured(target, ip_len);
            if let Some(&(_, ceiling, least)) = RATIO_GOALS.iter().find(|g| g.0 == target) {
                let theirs = self.measured(ceiling, ip_len);
                let (value, met, detail) = match (mine, theirs) {
                    (Some(a), Some(b)) if b.throughput_pps > 0.0 => {
                        let v = a.throughput_pps / b.throughput_pps;
                        (
                            Some(v),
                            Some(v >= least),
                            format!("{} / {}", mpps(a), mpps(b)),
                        )
                    }
                    (None, _) => (None, None, format!("{target} not measured")),
                    (Some(_), Some(_)) => (
                        None,
                        None,
                        format!("{ceiling} lost packets at every rate tried"),
                    ),
                    _ => (None, None, format!("{ceiling} not measured at this size")),
                };
                goals.push(Goal {
                    goal: format!("{target} / {ceiling} >= {least}"),
                    size: size.clone(),
                    ip_len,
                    value,
                    met,
                    detail,
                });
            }
            if target == ESP_COMPARISON.0 {
                goals.push(self.esp_comparison(&size, ip_len));
            }
            if target != "xdp" {
                continue;
            }
            let Some(m) = mine else {
                continue;
            };
            let received: u64 = m.trials.iter().map(|t| t.received).sum();
            let filled = m.reflector_seq_top > 0 && m.zero_timestamps == 0 && m.residence.is_some();
            goals.push(Goal {
                goal: "xdp replies carry the reflector's sequence number and nonzero T2, T3".into(),
                size: size.clone(),
                ip_len,
                value: None,
                met: Some(filled),
                detail: format!(
                    "{received} replies, reflector sequence numbers up to {}, {} with a zero T2 or T3, {} residence samples",
                    m.reflector_seq_top.saturating_sub(1),
                    m.zero_timestamps,
                    m.residence.as_ref().map_or(0, |d| d.count)
                ),
            });
            goals.push(match &m.residence {
                Some(d) => Goal {
                    goal: format!("xdp residence p99 < {XDP_RESIDENCE_P99_NS} ns"),
                    size: size.clone(),
                    ip_len,
                    value: Some(d.p99_ns as f64),
                    met: Some(d.p99_ns < XDP_RESIDENCE_P99_NS),
                    detail: format!(
                        "p50 {} ns, p99 {} ns, max {} ns",
                        d.p50_ns, d.p99_ns, d.max_ns
                    ),
                },
                None => Goal {
                    goal: format!("xdp residence p99 < {XDP_RESIDENCE_P99_NS} ns"),
                    size: size.clone(),
                    ip_len,
                    value: None,
                    met: None,
                    detail: "no residence samples".into(),
                },
            });
            // perfSONAR twampd if it ran, else any external reflector.
            let at = |name: &str| {
                self.results
                    .iter()
                    .find(|r| r.target == name && r.ip_len == ip_len)
            };
            let ext = match (at("twampd"), at("external")) {
                (Some(t), _) if t.measured.is_some() => Some(t),
                (_, Some(e)) if e.measured.is_some() => Some(e),
                (t, e) => t.or(e),
            };
            let ext_name = ext.map_or("external", |r| r.target.as_str());
            let (value, met, detail) = match ext.and_then(|r| r.measured.as_ref()) {
                Some(e) if e.throughput_pps > 0.0 => {
                    let v = m.throughput_pps / e.throughput_pps;
                    (
                        Some(v),
                        Some(v >= EXTERNAL_FACTOR),
                        format!("{} / {}", mpps(m), mpps(e)),
                    )
                }
                Some(e) => (
                    None,
                    None,
                    format!(
                        "external reflector lost packets even at the lowest rate ({})",
                        mpps(e)
                    ),
                ),
                None => (
                    None,
                    None,
                    ext.and_then(|r| r.note.clone())
                        .unwrap_or_else(|| "external reflector not run at this size".into()),
                ),
            };
            goals.push(Goal {
                goal: format!("xdp / {ext_name} >= {EXTERNAL_FACTOR}"),
                size,
                ip_len,
                value,
                met,
                detail,
            });
        }
        self.goals = goals;
    }

    /// The [`ESP_COMPARISON`] line for `size` (`met` is always `None`).
    fn esp_comparison(&self, size: &str, ip_len: usize) -> Goal {
        let (esp, plain) = ESP_COMPARISON;
        let at = |name: &str| {
            self.results
                .iter()
                .find(|r| r.target == name && r.size == size)
        };
        let mpps = |m: &Measured, r: &TargetResult| {
            format!("{:.3} Mpps at {} octets", m.throughput_pps / 1e6, r.ip_len)
        };
        let (value, detail) = match (at(esp), at(plain)) {
            (Some(a), Some(b)) => match (&a.measured, &b.measured) {
                (Some(ma), Some(mb)) if mb.throughput_pps > 0.0 => (
                    Some(ma.throughput_pps / mb.throughput_pps),
                    format!("{} / {}; no goal", mpps(ma, a), mpps(mb, b)),
                ),
                (Some(_), Some(_)) => (None, format!("{plain} lost packets at every rate tried")),
                (None, _) => (None, format!("{esp} not measured")),
                (_, None) => (None, format!("{plain} not measured at this size")),
            },
            (_, None) => (None, format!("{plain} not run at this size")),
            (None, _) => (None, format!("{esp} not run at this size")),
        };
        Goal {
            goal: format!("{esp} / {plain} (reported)"),
            size: size.to_owned(),
            ip_len,
            value,
            met: None,
            detail,
        }
    }

    /// The goals as a Markdown table.
    pub fn goals_table(&self) -> String {
        let mut s = String::new();
        s.push_str("| goal | size (IP) | figure | met | detail |\n|---|---:|---:|---|---|\n");
        for g in &self.goals {
            let fig = match g.value {
                None => "–".to_string(),
                Some(v) if g.goal.contains("residence") => fmt_ns(v as i64),
                Some(v) => format!("{v:.2}"),
            };
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {} | {} |",
                g.goal, g.size, g.ip_len, fig, met, g.detail
            );
        }
        s
    }

    /// The Markdown table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("| target | size (IP) | Mpps | Gbit/s | of ceiling | loss | RTT p50 | RTT p99 | RTT p99.9 | residence p50 | residence p99 | note |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.results {
            let size = format!("{} ({})", r.size, r.ip_len);
            match (&r.status, &r.measured) {
                (Status::Measured, Some(m)) => {
                    let d = |x: &Option<Distribution>, f: fn(&Distribution) -> i64| {
                        x.as_ref().map_or("–".into(), |d| fmt_ns(f(d)))
                    };
                    let mut note = Vec::new();
                    if m.generator_limited {
                        note.push("generator-limited".to_string());
                    }
                    if !m.confirmed && m.throughput_pps > 0.0 {
                        note.push("unconfirmed".to_string());
                    }
                    if let Some(n) = &r.note {
                        note.push(n.clone());
                    }
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.target,
                        size,
                        m.throughput_pps / 1e6,
                        m.throughput_gbps,
                        m.share_of_ceiling
                            .map_or("–".into(), |x| format!("{:.0} %", x * 100.0)),
                        fmt_loss(m.loss_ratio),
                        d(&m.rtt, |d| d.p50_ns),
                        d(&m.rtt, |d| d.p99_ns),
                        d(&m.rtt, |d| d.p999_ns),
                        d(&m.residence, |d| d.p50_ns),
                        d(&m.residence, |d| d.p99_ns),
                        note.join("; ")
                    );
                }
                _ => {
                    let what = match r.status {
                        Status::Failed => "failed",
                        _ => "skipped",
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} | – | – | – | – | – | – | – | – | – | {}: {} |",
                        r.target,
                        size,
                        what,
                        r.note.as_deref().unwrap_or("")
                    );
                }
            }
        }
        s
    }

    /// Writes `report.json`, `table.md` and the plots into `dir`; returns
    /// the files written and the plots that could not be drawn (why).
    pub fn write(&self, dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<String>)> {
        let mut warnings = Vec::new();
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        let json = dir.join("report.json");
        let f = std::fs::File::create(&json)?;
        serde_json::to_writer_pretty(io::BufWriter::new(f), self)?;
        files.push(json);
        let md = dir.join("table.md");
        std::fs::write(
            &md,
            format!(
                "# ricochet-bench\n\n`{}`\n\n{}\n## Goals\n\n{}",
                self.meta.command,
                self.table(),
                self.goals_table()
            ),
        )?;
        files.push(md);
        let mut sizes: Vec<usize> = self.results.iter().map(|r| r.ip_len).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for ip_len in sizes {
            let rs: Vec<&TargetResult> = self
                .results
                .iter()
                .filter(|r| r.ip_len == ip_len && r.measured.is_some())
                .collect();
            if rs.is_empty() {
                continue;
            }
            let p = dir.join(format!("throughput-{ip_len}.png"));
            match plot::throughput(&p, ip_len, &rs) {
                Ok(()) => files.push(p),
                Err(e) => warnings.push(format!("{}: {e}", p.display())),
            }
            if rs
                .iter()
                .any(|r| r.measured.as_ref().is_some_and(|m| !m.rtt_cdf.is_empty()))
            {
                let p = dir.join(format!("latency-cdf-{ip_len}.png"));
                match plot::latency_cdf(&p, ip_len, &rs) {
                    Ok(()) => files.push(p),
                    Err(e) => warnings.push(format!("{}: {e}", p.display())),
                }
            }
        }
        Ok((files, warnings))
    }
}

/// Nanoseconds for humans: ns below 10 µs, µs below 10 ms, else ms.
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    if a < 10_000 {
        format!("{ns} ns")
    } else if a < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn fmt_loss(r: f64) -> String {
    if r == 0.0 {
        "0".into()
    } else {
        format!("{:.3} %", r * 100.0)
    }
}

/// PNG plots. Text needs a TrueType font: DejaVu Sans (Debian
/// `fonts-dejavu-core`) or `RICOCHET_BENCH_FONT`; without one the plots are
/// skipped with an error the caller reports.
pub mod plot {
    use super::TargetResult;
    use plotters::prelude::*;
    use std::path::Path;
    use std::sync::OnceLock;

    const FONT_PATHS: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];

    /// Registers a font for plotters once; the error says what is missing.
    pub fn font() -> Result<(), String> {
        static DONE: OnceLock<Result<(), String>> = OnceLock::new();
        DONE.get_or_init(|| {
            let env = std::env::var("RICOCHET_BENCH_FONT").ok();
            let paths = env.iter().map(String::as_str).chain(FONT_PATHS);
            for p in paths {
                if let Ok(bytes) = std::fs::read(p) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .map_err(|_| format!("{p}: not a usable font"));
                }
            }
            Err("no TrueType font for the plots (install fonts-dejavu-core or set RICOCHET_BENCH_FONT)".into())
        })
        .clone()
    }

    fn colour(i: usize) -> RGBColor {
        const C: [RGBColor; 8] = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
        ];
        C[i % C.len()]
    }

    /// Received against offered load (Mpps), one series per target, with
    /// the lossless diagonal.
    pub fn throughput(path: &Path, ip_len: usize, rs: &[&TargetResult]) -> Result<(), String> {
        font()?;
        let mut max = 0.01f64;
        for r in rs {
            for t in &r
                .measured
                .as_ref()
                .map_or(&[][..], |m| &m.trials[..])
                .to_vec()
            {
                max = max.max(t.offered_pps / 1e6).max(t.received_pps / 1e6);
            }
        }
        let max = max * 1.05;
        let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Throughput, {ip_len}-octet IP packets"),
                ("sans-serif", 24),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max, 0f64..max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("offered (Mpps)")
            .y_desc("received (Mpps)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (max, max)], BLACK.mix(0.3)))
            .map_err(|e| e.to_string())?
            .label("no loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
        for (i, r) in rs.iter().enumerate() {
            let Some(m) = &r.measured else { continue };
            let mut pts: Vec<(f64, f64)> = m
                .trials
                .iter()
                .map(|t| (t.offered_pps / 1e6, t.received_pps / 1e6))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.target.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }

    /// CDF of the round trip at each target's throughput (log time axis).
    pub fn latency_cdf(path: &Path, ip_len: usize, rs: &[&TargetResult]) -> Result<(), String> {
        font()?;
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for r in rs {
            for (x, _) in r.measured.as_ref().map_or(&[][..], |m| &m.rtt_cdf[..]) {
                lo = lo.min(*x / 1e3);
                hi = hi.max(*x / 1e3);
            }
        }
        if hi <= 0.0 {
            return Ok(());
        }
        let lo = (lo * 0.8).max(0.01);
        let hi = (hi * 1.25).max(lo * 10.0);
        let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Round-trip time CDF at throughput, {ip_len}-octet IP packets"),
                ("sans-serif", 24),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("round trip (µs)")
            .y_desc("fraction of replies")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, r) in rs.iter().enumerate() {
            let Some(m) = &r.measured else { continue };
            if m.rtt_cdf.is_empty() {
                continue;
            }
            let c = colour(i);
            let pts: Vec<(f64, f64)> = m.rtt_cdf.iter().map(|(x, y)| (x / 1e3, *y)).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.target.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar over `jobs` target × size searches.
    pub fn new(jobs: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(jobs);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress { bar }
    }

    /// A bar that draws nothing (tests).
    pub fn hidden() -> Progress {
        Progress {
            bar: indicatif::ProgressBar::hidden(),
        }
    }

    /// Shows what runs now.
    pub fn message(&self, m: String) {
        self.bar.set_message(m);
    }

    /// One search done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Prints a line above the bar.
    pub fn println(&self, m: impl AsRef<str>) {
        self.bar.println(m);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Phase;

    #[test]
    fn wire_rate_counts_fcs_padding_preamble_and_gap() {
        // 64-octet frames (60 + FCS): 84 octets on the wire; 14.88 Mpps fill 10 Gbit/s.
        assert_eq!(wire_bits(60), 84 * 8);
        assert_eq!(wire_bits(20), 84 * 8, "short frames are padded to 64");
        assert!((wire_gbps(14_880_952.0, 60) - 10.0).abs() < 1e-3);
        // 1514-octet frames (1500-octet IP): 1538 on the wire, 812,744 pps = 10 Gbit/s.
        assert_eq!(wire_bits(1514), 1538 * 8);
        assert!((wire_gbps(812_743.8, 1514) - 10.0).abs() < 1e-3);
    }

    fn dist(p50: i64) -> Distribution {
        Distribution {
            count: 10,
            min_ns: p50 / 2,
            p50_ns: p50,
            p99_ns: p50 * 2,
            p999_ns: p50 * 3,
            max_ns: p50 * 4,
            mean_ns: p50 as f64,
        }
    }

    fn result(target: &str, ceiling: Option<&str>, ip_len: usize, pps: f64) -> TargetResult {
        TargetResult {
            target: target.into(),
            description: String::new(),
            ceiling: ceiling.map(Into::into),
            mode: "twamp".into(),
            size: ip_len.to_string(),
            ip_len,
            frame_len: ip_len + 14,
            status: Status::Measured,
            note: None,
            measured: Some(Measured {
                throughput_pps: pps,
                throughput_gbps: wire_gbps(pps, ip_len + 14),
                share_of_ceiling: None,
                loss_ratio: 0.0,
                confirmed: true,
                generator_limited: false,
                rtt: Some(dist(20_000)),
                residence: None,
                rtt_cdf: vec![(10_000.0, 0.5), (40_000.0, 1.0)],
                trials: vec![TrialPoint {
                    phase: Phase::Search,
                    requested_pps: pps,
                    offered_pps: pps,
                    received_pps: pps,
                    sent: 100,
                    received: 100,
                    loss_ratio: 0.0,
                    passed: true,
                }],
                reflector_seq_top: 0,
                zero_timestamps: 0,
            }),
        }
    }

    fn report() -> Report {
        let mut skipped = result("xdp", Some("ceiling"), 112, 0.0);
        skipped.status = Status::Skipped;
        skipped.measured = None;
        skipped.note = Some("not wired yet: loader".into());
        Report {
            meta: Meta {
                command: "ricochet-bench --standard".into(),
                started_unix: 0,
                kernel: "6.18".into(),
                cpus: 2,
                lab: "rcl".into(),
                gen_core: Some(0),
                reflector_core: Some(1),
                mode: "twamp".into(),
                ipv6: false,
                search: crate::search::SearchConfig::default(),
                generator: crate::gen::trial::LiveConfig::default(),
                notes: vec![],
            },
            results: vec![
                result("ceiling", None, 112, 4_000_000.0),
                result("ceiling", None, 512, 2_000_000.0),
                result("socket", Some("ceiling"), 112, 1_000_000.0),
                result("socket", Some("ceiling"), 512, 1_500_000.0),
                result("socket", Some("missing"), 1500, 1_500_000.0),
                skipped,
            ],
            goals: vec![],
        }
    }

    #[test]
    fn shares_are_taken_at_the_same_size() {
        let mut r = report();
        r.fill_shares();
        let share = |i: usize| r.results[i].measured.as_ref().unwrap().share_of_ceiling;
        assert_eq!(share(0), None, "a ceiling has no ceiling");
        assert_eq!(share(2), Some(0.25));
        assert_eq!(share(3), Some(0.75));
        assert_eq!(share(4), None, "ceiling not measured");
    }

    #[test]
    fn table_shows_measured_and_skipped_rows() {
        let mut r = report();
        r.fill_shares();
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 6);
        assert!(
            lines[4].starts_with("| socket | 112 (112) | 1.000 | "),
            "{}",
            lines[4]
        );
        assert!(lines[4].contains("| 25 % |"));
        assert!(
            lines[4].contains("| 20.0 µs | 40.0 µs | 60.0 µs | – | – |"),
            "{}",
            lines[4]
        );
        assert!(lines[7].contains("skipped: not wired yet: loader"));
        assert_eq!(fmt_ns(950), "950 ns");
        assert_eq!(fmt_ns(25_000_000), "25.0 ms");
    }

    #[test]
    fn goals_are_ratios_at_the_same_size_and_say_what_is_missing() {
        let mut xdp = result("xdp", Some("ceiling"), 112, 3_700_000.0);
        {
            let m = xdp.measured.as_mut().unwrap();
            m.residence = Some(dist(400));
            m.reflector_seq_top = 101;
        }
        let mut xdp512 = result("xdp", Some("ceiling"), 512, 1_000_000.0);
        {
            let m = xdp512.measured.as_mut().unwrap();
            m.residence = Some(dist(700)); // p99 = 1400 ns
            m.zero_timestamps = 3;
        }
        let mut r = report();
        r.results = vec![
            result("ceiling", None, 112, 4_000_000.0),
            result("ceiling", None, 512, 2_000_000.0),
            xdp,
            xdp512,
            result("socket", Some("socket-echo"), 112, 900_000.0),
            result("socket-echo", None, 112, 1_000_000.0),
            result("external", None, 112, 10_000.0),
        ];
        r.fill_shares();
        r.fill_goals();
        let find = |goal: &str, ip_len: usize| {
            r.goals
                .iter()
                .find(|g| g.goal.starts_with(goal) && g.ip_len == ip_len)
                .unwrap_or_else(|| panic!("goal {goal} at {ip_len}: {:#?}", r.goals))
        };
        let g = find("xdp / ceiling", 112);
        assert_eq!((g.value, g.met), (Some(0.925), Some(true)));
        let g = find("xdp / ceiling", 512);
        assert_eq!((g.value, g.met), (Some(0.5), Some(false)));
        let g = find("xdp replies", 112);
        assert_eq!(g.met, Some(true), "{}", g.detail);
        let g = find("xdp replies", 512);
        assert_eq!(g.met, Some(false), "no reflector numbers, zero stamps");
        assert!(g.detail.contains("3 with a zero T2 or T3"), "{}", g.detail);
        let g = find("xdp residence", 112);
        assert_eq!((g.value, g.met), (Some(800.0), Some(true)));
        let g = find("xdp residence", 512);
        assert_eq!(g.met, Some(false));
        let g = find("xdp / external", 112);
        assert_eq!((g.value, g.met), (Some(370.0), Some(true)));
        let g = find("xdp / external", 512);
        assert_eq!((g.value, g.met), (None, None), "external not run at 512");
        let g = find("socket / socket-echo", 112);
        assert_eq!((g.value, g.met), (Some(0.9), Some(true)));
        assert!(r.goals.iter().all(|g| !g.goal.starts_with("afxdp")));
        let t = r.goals_table();
        assert!(
            t.contains("| xdp / ceiling >= 0.9 | 512 (512) | 0.50 | **no** |"),
            "{t}"
        );
        assert!(
            t.contains("| xdp residence p99 < 1000 ns | 112 (112) | 800 ns | yes |"),
            "{t}"
        );
    }

    /// The ESP line compares by size label (the smallest ESP frame is
    /// shorter than the smallest authenticated one) and is never a goal.
    #[test]
    fn esp_is_reported_against_plain_afxdp_at_the_same_size_label() {
        let label = |mut r: TargetResult, size: &str| {
            r.size = size.into();
            r
        };
        let mut r = report();
        r.results = vec![
            label(
                result("afxdp-auth", Some("afxdp-echo"), 140, 400_000.0),
                "min",
            ),
            label(
                result("afxdp-esp", Some("afxdp-echo"), 112, 300_000.0),
                "min",
            ),
            label(
                result("afxdp-esp", Some("afxdp-echo"), 512, 200_000.0),
                "512",
            ),
        ];
        r.fill_goals();
        let esp: Vec<&Goal> = r
            .goals
            .iter()
            .filter(|g| g.goal == "afxdp-esp / afxdp-auth (reported)")
            .collect();
        assert_eq!(esp.len(), 2, "{:#?}", r.goals);
        assert_eq!((esp[0].size.as_str(), esp[0].ip_len), ("min", 112));
        assert_eq!((esp[0].value, esp[0].met), (Some(0.75), None));
        assert!(
            esp[0]
                .detail
                .contains("0.300 Mpps at 112 octets / 0.400 Mpps at 140 octets"),
            "{}",
            esp[0].detail
        );
        assert_eq!((esp[1].value, esp[1].met), (None, None));
        assert_eq!(esp[1].detail, "afxdp-auth not run at this size");
    }

    #[test]
    fn writes_json_table_and_plots() {
        let mut r = report();
        r.fill_shares();
        let dir =
            std::env::temp_dir().join(format!("ricochet-bench-report-{}", std::process::id()));
        let (files, warnings) = r.write(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_reader(std::fs::File::open(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["results"][2]["measured"]["share_of_ceiling"], 0.25);
        assert_eq!(json["results"][5]["status"], "skipped");
        assert!(std::fs::read_to_string(dir.join("table.md"))
            .unwrap()
            .contains("| ceiling |"));
        if plot::font().is_ok() {
            assert!(warnings.is_empty(), "{warnings:?}");
            for n in [
                "throughput-112.png",
                "latency-cdf-112.png",
                "throughput-512.png",
            ] {
                let p = dir.join(n);
                assert!(files.contains(&p), "{n} written");
                let head = std::fs::read(&p).unwrap();
                assert_eq!(&head[1..4], b"PNG");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
