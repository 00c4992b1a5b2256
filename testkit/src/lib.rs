//! Test support: golden captures and pcap flow extraction.
//!
//! The decoding here is deliberately independent of the protocol crate: it
//! only splits link, IP and transport layers (with `etherparse`), so tests can
//! feed the raw TWAMP/STAMP octets to the code under test and compare.

pub mod charon;
pub mod lab;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// The `shared/` directory beside the repository (CI lays a copy there), or
/// `$RICOCHET_SHARED`.
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("RICOCHET_SHARED") {
        return PathBuf::from(p);
    }
    // testkit/ is one level below the workspace root; shared/ sits beside the root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [root.join("../shared"), root.join("shared")];
    for c in &candidates {
        if c.join("interop").is_dir() {
            return c.clone();
        }
    }
    panic!(
        "golden data not found: expected {} (set RICOCHET_SHARED to the shared/ directory)",
        candidates[0].display()
    );
}

/// `shared/interop/<peer>/<file>`.
pub fn interop_file(peer: &str, file: &str) -> PathBuf {
    shared_dir().join("interop").join(peer).join(file)
}

/// Loads a `*.decoded.json` file.
pub fn decoded_json(peer: &str, file: &str) -> serde_json::Value {
    let path = interop_file(peer, file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes a hex string from the JSON files (spaces allowed).
pub fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// One UDP datagram of a capture.
#[derive(Debug, Clone)]
pub struct UdpDatagram {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IPv4 TTL or IPv6 Hop Limit.
    pub ttl: u8,
    /// IPv4 TOS or IPv6 Traffic Class (DSCP << 2 | ECN).
    pub tos: u8,
    pub payload: Vec<u8>,
}

/// A TCP payload chunk in capture order (one segment, retransmissions removed).
#[derive(Debug, Clone)]
pub struct TcpChunk {
    pub ts_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// One TCP connection's two byte streams, reassembled.
#[derive(Debug, Clone)]
pub struct TcpConversation {
    /// The side that sent the first SYN.
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_to_server: Vec<u8>,
    pub server_to_client: Vec<u8>,
    /// The payload-bearing segments in capture order.
    pub chunks: Vec<TcpChunk>,
}

/// What a capture holds.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub udp: Vec<UdpDatagram>,
    pub tcp: Vec<TcpConversation>,
}

impl Capture {
    /// UDP datagrams from `src` (any port when `src.port() == 0`).
    pub fn udp_from(&self, src: SocketAddr) -> Vec<&UdpDatagram> {
        self.udp
            .iter()
            .filter(|d| d.src.ip() == src.ip() && (src.port() == 0 || d.src.port() == src.port()))
            .collect()
    }
}

/// Reads an Ethernet (linktype 1) pcap into UDP datagrams and TCP conversations.
pub fn read_pcap(path: &Path) -> Capture {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file)
        .unwrap_or_else(|e| panic!("{}: not a pcap: {e}", path.display()));
    let mut cap = Capture::default();
    // Per conversation: next expected sequence number per direction.
    let mut tcp_next: Vec<[Option<u32>; 2]> = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ts_ns = pkt.timestamp.as_nanos() as u64;
        let Ok(sliced) = SlicedPacket::from_ethernet(&pkt.data) else {
            continue;
        };
        let (src_ip, dst_ip, ttl, tos): (IpAddr, IpAddr, u8, u8) = match &sliced.net {
            Some(NetSlice::Ipv4(v4)) => {
                let h = v4.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.ttl(),
                    (h.dcp().value() << 2) | h.ecn().value(),
                )
            }
            Some(NetSlice::Ipv6(v6)) => {
                let h = v6.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.hop_limit(),
                    h.traffic_class(),
                )
            }
            _ => continue,
        };
        match &sliced.transport {
            Some(TransportSlice::Udp(u)) => cap.udp.push(UdpDatagram {
                ts_ns,
                src: SocketAddr::new(src_ip, u.source_port()),
                dst: SocketAddr::new(dst_ip, u.destination_port()),
                ttl,
                tos,
                payload: u.payload().to_vec(),
            }),
            Some(TransportSlice::Tcp(t)) => {
                let src = SocketAddr::new(src_ip, t.source_port());
                let dst = SocketAddr::new(dst_ip, t.destination_port());
                let idx = cap.tcp.iter().position(|c| {
                    (c.client == src && c.server == dst) || (c.client == dst && c.server == src)
                });
                let idx = match idx {
                    Some(i) => i,
                    None => {
                        if !t.syn() || t.ack() {
                            continue; // mid-stream capture start: not ours
                        }
                        cap.tcp.push(TcpConversation {
                            client: src,
                            server: dst,
                            client_to_server: Vec::new(),
                            server_to_client: Vec::new(),
                            chunks: Vec::new(),
                        });
                        tcp_next.push([None, None]);
                        cap.tcp.len() - 1
                    }
                };
                let conv = &mut cap.tcp[idx];
                let dir = usize::from(conv.client != src);
                let seq = t.sequence_number();
                let next = &mut tcp_next[idx][dir];
                if t.syn() {
                    *next = Some(seq.wrapping_add(1));
                    continue;
                }
                let payload = t.payload();
                if payload.is_empty() {
                    continue;
                }
                let Some(expect) = *next else { continue };
                // Skip retransmitted octets; a gap would be a capture loss.
                let skip = expect.wrapping_sub(seq) as usize;
                if skip >= payload.len() && skip < (1 << 30) {
                    continue;
                }
                assert!(skip < (1 << 30), "{}: TCP gap in capture", path.display());
                let data = &payload[skip..];
                *next = Some(expect.wrapping_add(data.len() as u32));
                if dir == 0 {
                    conv.client_to_server.extend_from_slice(data);
                } else {
                    conv.server_to_client.extend_from_slice(data);
                }
                conv.chunks.push(TcpChunk {
                    ts_ns,
                    src,
                    dst,
                    payload: data.to_vec(),
                });
            }
            _ => {}
        }
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfsonar_open_capture_has_the_documented_sizes() {
        let cap = read_pcap(&interop_file("perfsonar-5.2.3", "twamp-open-v4.pcap"));
        assert_eq!(cap.tcp.len(), 1);
        let c = &cap.tcp[0];
        assert_eq!(c.server.port(), 862);
        // README: server→client 64 + 48 + 48 + 32, client→server 164 + 112 + 32 + 32.
        assert_eq!(c.server_to_client.len(), 192);
        assert_eq!(c.client_to_server.len(), 340);
        assert_eq!(cap.udp.len(), 20);
        assert!(cap.udp.iter().all(|d| d.payload.len() == 41));
    }

    #[test]
    fn ipv6_capture_decodes_addresses_and_hop_limit() {
        let cap = read_pcap(&interop_file(
            "perfsonar-5.2.3",
            "twamp-open-v6-port8620.pcap",
        ));
        assert_eq!(cap.tcp[0].server, "[::1]:8620".parse().unwrap());
        assert!(cap.udp.iter().all(|d| d.ttl == 255 && d.src.is_ipv6()));
    }

    #[test]
    fn dscp_ef_capture_reports_tos() {
        let cap = read_pcap(&interop_file(
            "perfsonar-5.2.3",
            "twamp-open-v4-pad200-dscpEF.pcap",
        ));
        assert!(cap
            .udp
            .iter()
            .all(|d| d.tos == 0xb8 && d.payload.len() == 214));
    }
}

#[cfg(test)]
mod lab_tests {
    use super::lab::{available, Lab, Side};

    #[test]
    fn lab_comes_up_pings_and_is_gone_after_drop() {
        if !available() {
            eprintln!("skipped: needs root for network namespaces");
            return;
        }
        let name;
        {
            let lab = Lab::up("tk");
            name = lab.netns(Side::Sender);
            let out = lab.run(Side::Sender, "ping", &["-c1", "-W2", "198.18.0.2"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&list.stdout).contains(&name),
            "namespace left behind"
        );
    }
}
