//! IKEv2 payloads (RFC 7296 §3.2–3.16).
//!
//! Generic payload header (every payload):
//!
//! | Off | Len | Field |
//! |---:|---:|---|
//! | 0 | 1 | Next Payload |
//! | 1 | 1 | C (critical, 0x80) + reserved |
//! | 2 | 2 | Payload Length (header included) |
//!
//! [`PayloadIter`] walks a chain zero-copy; [`Payload::parse`] turns one body
//! into an owned `Repr`; [`emit_chain`] writes a chain back.

use super::{be16, be32, check_len, WireError};
use std::net::IpAddr;

/// Payload type numbers (RFC 7296 §3.2, RFC 7383).
pub mod ptype {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Length of the generic payload header.
pub const GENERIC_HEADER_LEN: usize = 4;

/// One payload of a chain: its type, critical bit and body (generic header
/// stripped), borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    pub ptype: u8,
    pub critical: bool,
    pub body: &'a [u8],
}

/// Zero-copy iterator over a payload chain whose first payload has type
/// `first`. Stops after the payload whose Next Payload is 0; an error ends
/// the iteration. The SK payload, when met, is yielded and ends the chain
/// (its Next Payload names the first *inner* payload, RFC 7296 §3.14).
pub struct PayloadIter<'a> {
    rest: &'a [u8],
    next: u8,
    done: bool,
}

impl<'a> PayloadIter<'a> {
    pub fn new(first: u8, chain: &'a [u8]) -> Self {
        PayloadIter {
            rest: chain,
            next: first,
            done: first == ptype::NONE,
        }
    }

    /// The Next Payload value of the last payload returned (for SK: the
    /// first inner payload type).
    pub fn next_type(&self) -> u8 {
        self.next
    }
}

impl<'a> Iterator for PayloadIter<'a> {
    type Item = Result<RawPayload<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let ptype = self.next;
        if let Err(e) = check_len("payload header", self.rest, GENERIC_HEADER_LEN) {
            self.done = true;
            return Some(Err(e));
        }
        let next = self.rest[0];
        let critical = self.rest[1] & 0x80 != 0;
        let len = be16(self.rest, 2) as usize;
        if len < GENERIC_HEADER_LEN || len > self.rest.len() {
            self.done = true;
            return Some(Err(WireError::BadLength {
                what: "payload",
                len,
                why: "Payload Length beyond the message or below 4",
            }));
        }
        let body = &self.rest[GENERIC_HEADER_LEN..len];
        self.rest = &self.rest[len..];
        self.next = next;
        if ptype == ptype::SK || ptype == ptype::SKF {
            // The SK payload must be the last one (RFC 7296 §3.14).
            self.done = true;
            if !self.rest.is_empty() {
                return Some(Err(WireError::BadLength {
                    what: "SK payload",
                    len: self.rest.len(),
                    why: "octets after the Encrypted payload",
                }));
            }
        } else if next == ptype::NONE {
            self.done = true;
            if !self.rest.is_empty() {
                return Some(Err(WireError::BadLength {
                    what: "payload chain",
                    len: self.rest.len(),
                    why: "octets after the last payload",
                }));
            }
        }
        Some(Ok(RawPayload {
            ptype,
            critical,
            body,
        }))
    }
}

/// Security protocol identifiers (RFC 7296 §3.3.1).
pub mod proto {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Transform types (RFC 7296 §3.3.2).
pub mod ttype {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
}

/// The Key Length transform attribute type (TV format, RFC 7296 §3.3.5).
pub const ATTR_KEY_LENGTH: u16 = 14;

/// One transform attribute. TV attributes (AF = 1) carry a 2-octet value;
/// TLV attributes carry octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Tv { atype: u16, value: u16 },
    Tlv { atype: u16, value: Vec<u8> },
}

/// One transform (RFC 7296 §3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub ttype: u8,
    pub id: u16,
    pub attributes: Vec<Attribute>,
}

impl Transform {
    pub fn new(ttype: u8, id: u16) -> Self {
        Transform {
            ttype,
            id,
            attributes: Vec::new(),
        }
    }

    pub fn with_key_len(ttype: u8, id: u16, bits: u16) -> Self {
        Transform {
            ttype,
            id,
            attributes: vec![Attribute::Tv {
                atype: ATTR_KEY_LENGTH,
                value: bits,
            }],
        }
    }

    /// The Key Length attribute, if present.
    pub fn key_len(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Tv { atype, value } if *atype == ATTR_KEY_LENGTH => Some(*value),
            _ => None,
        })
    }
}

/// One proposal (RFC 7296 §3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub number: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// A traffic selector (RFC 7296 §3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol (0 = any).
    pub ip_proto: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start_addr: IpAddr,
    pub end_addr: IpAddr,
}

impl TrafficSelector {
    /// Every port and protocol of a single address.
    pub fn host(addr: IpAddr) -> Self {
        TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 0xffff,
            start_addr: addr,
            end_addr: addr,
        }
    }

    /// Whether `other` lies entirely within `self`.
    pub fn contains(&self, other: &TrafficSelector) -> bool {
        (self.ip_proto == 0 || self.ip_proto == other.ip_proto)
            && self.start_port <= other.start_port
            && other.end_port <= self.end_port
            && ip_le(&self.start_addr, &other.start_addr)
            && ip_le(&other.end_addr, &self.end_addr)
    }
}

impl TrafficSelector {
    /// The selector both `self` and `other` cover, if any (same address
    /// family, overlapping ports and addresses, compatible protocol).
    pub fn intersect(&self, other: &TrafficSelector) -> Option<TrafficSelector> {
        let ip_proto = match (self.ip_proto, other.ip_proto) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let start_port = self.start_port.max(other.start_port);
        let end_port = self.end_port.min(other.end_port);
        if start_port > end_port {
            return None;
        }
        let start_addr = max_ip(&self.start_addr, &other.start_addr)?;
        let end_addr = min_ip(&self.end_addr, &other.end_addr)?;
        if !ip_le(&start_addr, &end_addr) {
            return None;
        }
        Some(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start_addr,
            end_addr,
        })
    }
}

fn max_ip(a: &IpAddr, b: &IpAddr) -> Option<IpAddr> {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => Some(IpAddr::V4(*x.max(y))),
        (IpAddr::V6(x), IpAddr::V6(y)) => Some(IpAddr::V6(*x.max(y))),
        _ => None,
    }
}

fn min_ip(a: &IpAddr, b: &IpAddr) -> Option<IpAddr> {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => Some(IpAddr::V4(*x.min(y))),
        (IpAddr::V6(x), IpAddr::V6(y)) => Some(IpAddr::V6(*x.min(y))),
        _ => None,
    }
}

fn ip_le(a: &IpAddr, b: &IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
        _ => false,
    }
}

/// TS types (RFC 7296 §3.13.1).
pub const TS_IPV4_ADDR_RANGE: u8 = 7;
pub const TS_IPV6_ADDR_RANGE: u8 = 8;

/// ID types (RFC 7296 §3.5).
pub mod idtype {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const KEY_ID: u8 = 11;
}

/// An ID payload body (IDi or IDr).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identification {
    pub id_type: u8,
    pub data: Vec<u8>,
}

impl Identification {
    pub fn fqdn(name: &str) -> Self {
        Identification {
            id_type: idtype::FQDN,
            data: name.as_bytes().to_vec(),
        }
    }

    /// An ID_IPV4_ADDR or ID_IPV6_ADDR identity.
    pub fn address(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Identification {
                id_type: idtype::IPV4_ADDR,
                data: a.octets().to_vec(),
            },
            IpAddr::V6(a) => Identification {
                id_type: idtype::IPV6_ADDR,
                data: a.octets().to_vec(),
            },
        }
    }

    /// The body octets as they enter the AUTH computation (RFC 7296 §2.15:
    /// ID type, 3 reserved octets, data).
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.data.len());
        v.extend_from_slice(&[self.id_type, 0, 0, 0]);
        v.extend_from_slice(&self.data);
        v
    }

    /// A printable form (FQDN / e-mail / key id as text, addresses parsed).
    pub fn display(&self) -> String {
        match self.id_type {
            idtype::IPV4_ADDR if self.data.len() == 4 => {
                let a: [u8; 4] = self.data[..].try_into().unwrap_or([0; 4]);
                std::net::Ipv4Addr::from(a).to_string()
            }
            idtype::IPV6_ADDR if self.data.len() == 16 => {
                let a: [u8; 16] = self.data[..].try_into().unwrap_or([0; 16]);
                std::net::Ipv6Addr::from(a).to_string()
            }
            _ => String::from_utf8_lossy(&self.data).into_owned(),
        }
    }
}

/// A Notify payload (RFC 7296 §3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub ntype: u16,
    pub data: Vec<u8>,
}

impl Notify {
    pub fn status(ntype: u16, data: &[u8]) -> Self {
        Notify {
            protocol: 0,
            spi: Vec::new(),
            ntype,
            data: data.to_vec(),
        }
    }
}

/// A Delete payload (RFC 7296 §3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: u8,
    /// Each SPI's octets (4 for ESP, none for IKE).
    pub spis: Vec<Vec<u8>>,
}

/// One payload as values. Unknown non-critical payloads are kept as
/// [`Payload::Unknown`] so a chain re-emits unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Identification),
    IdR(Identification),
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// CERT, CERTREQ, CP, EAP and unknown payload types, kept opaque.
    Other {
        ptype: u8,
        body: Vec<u8>,
    },
}

impl Payload {
    /// The payload type number.
    pub fn ptype(&self) -> u8 {
        match self {
            Payload::Sa(_) => ptype::SA,
            Payload::Ke { .. } => ptype::KE,
            Payload::IdI(_) => ptype::IDI,
            Payload::IdR(_) => ptype::IDR,
            Payload::Auth { .. } => ptype::AUTH,
            Payload::Nonce(_) => ptype::NONCE,
            Payload::Notify(_) => ptype::NOTIFY,
            Payload::Delete(_) => ptype::DELETE,
            Payload::VendorId(_) => ptype::VENDOR_ID,
            Payload::TsI(_) => ptype::TSI,
            Payload::TsR(_) => ptype::TSR,
            Payload::Other { ptype, .. } => *ptype,
        }
    }

    /// Parses one payload body. SK/SKF must be handled by the caller.
    pub fn parse(raw: &RawPayload<'_>) -> Result<Payload, WireError> {
        let b = raw.body;
        Ok(match raw.ptype {
            ptype::SA => Payload::Sa(parse_proposals(b)?),
            ptype::KE => {
                check_len("KE payload", b, 4)?;
                Payload::Ke {
                    group: be16(b, 0),
                    data: b[4..].to_vec(),
                }
            }
            ptype::IDI | ptype::IDR => {
                check_len("ID payload", b, 4)?;
                let id = Identification {
                    id_type: b[0],
                    data: b[4..].to_vec(),
                };
                if raw.ptype == ptype::IDI {
                    Payload::IdI(id)
                } else {
                    Payload::IdR(id)
                }
            }
            ptype::AUTH => {
                check_len("AUTH payload", b, 4)?;
                Payload::Auth {
                    method: b[0],
                    data: b[4..].to_vec(),
                }
            }
            ptype::NONCE => {
                // RFC 7296 §3.9: 16 to 256 octets.
                if b.len() < 16 || b.len() > 256 {
                    return Err(WireError::BadLength {
                        what: "Nonce payload",
                        len: b.len(),
                        why: "nonce must be 16 to 256 octets",
                    });
                }
                Payload::Nonce(b.to_vec())
            }
            ptype::NOTIFY => {
                check_len("Notify payload", b, 4)?;
                let spi_size = b[1] as usize;
                check_len("Notify payload", b, 4 + spi_size)?;
                Payload::Notify(Notify {
                    protocol: b[0],
                    ntype: be16(b, 2),
                    spi: b[4..4 + spi_size].to_vec(),
                    data: b[4 + spi_size..].to_vec(),
                })
            }
            ptype::DELETE => {
                check_len("Delete payload", b, 4)?;
                let spi_size = b[1] as usize;
                let n = be16(b, 2) as usize;
                let need = 4 + spi_size * n;
                if b.len() != need {
                    return Err(WireError::BadLength {
                        what: "Delete payload",
                        len: b.len(),
                        why: "not 4 + SPI size × number of SPIs",
                    });
                }
                let spis = if spi_size == 0 {
                    Vec::new()
                } else {
                    b[4..].chunks_exact(spi_size).map(<[u8]>::to_vec).collect()
                };
                Payload::Delete(Delete {
                    protocol: b[0],
                    spis,
                })
            }
            ptype::VENDOR_ID => Payload::VendorId(b.to_vec()),
            ptype::TSI => Payload::TsI(parse_ts(b)?),
            ptype::TSR => Payload::TsR(parse_ts(b)?),
            ptype::SK | ptype::SKF => {
                return Err(WireError::BadField {
                    what: "payload chain",
                    field: "payload type",
                    value: u64::from(raw.ptype),
                })
            }
            ptype::CERT | ptype::CERTREQ | ptype::CP | ptype::EAP => Payload::Other {
                ptype: raw.ptype,
                body: b.to_vec(),
            },
            other => {
                if raw.critical {
                    return Err(WireError::UnsupportedCritical(other));
                }
                Payload::Other {
                    ptype: other,
                    body: b.to_vec(),
                }
            }
        })
    }

    /// Appends this payload's body (without the generic header).
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => emit_proposals(props, out),
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ntype.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol);
                out.push(d.spis.first().map_or(0, |s| s.len() as u8));
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::VendorId(v) => out.extend_from_slice(v),
            Payload::TsI(ts) | Payload::TsR(ts) => emit_ts(ts, out),
            Payload::Other { body, .. } => out.extend_from_slice(body),
        }
    }
}

/// Parses a whole chain (no SK inside) into Reprs.
pub fn parse_chain(first: u8, chain: &[u8]) -> Result<Vec<Payload>, WireError> {
    let mut out = Vec::new();
    for raw in PayloadIter::new(first, chain) {
        let raw = raw?;
        if raw.ptype == ptype::SKF {
            return Err(WireError::Fragmented);
        }
        out.push(Payload::parse(&raw)?);
    }
    Ok(out)
}

/// Emits a chain; returns the first payload type (0 when empty). The last
/// payload's Next Payload is `last_next` (0 normally).
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(ptype::NONE, Payload::ptype);
        let start = out.len();
        out.extend_from_slice(&[next, 0, 0, 0]);
        p.emit_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map_or(ptype::NONE, Payload::ptype)
}

fn parse_proposals(mut b: &[u8]) -> Result<Vec<Proposal>, WireError> {
    let mut props = Vec::new();
    loop {
        check_len("proposal", b, 8)?;
        let last = b[0];
        let len = be16(b, 2) as usize;
        if len < 8 || len > b.len() {
            return Err(WireError::BadLength {
                what: "proposal",
                len,
                why: "Proposal Length beyond the SA payload or below 8",
            });
        }
        let p = &b[..len];
        let spi_size = p[6] as usize;
        let ntrans = p[7] as usize;
        check_len("proposal SPI", p, 8 + spi_size)?;
        let mut t = &p[8 + spi_size..];
        let mut transforms = Vec::with_capacity(ntrans.min(64));
        for i in 0..ntrans {
            check_len("transform", t, 8)?;
            let tlast = t[0];
            let tlen = be16(t, 2) as usize;
            if tlen < 8 || tlen > t.len() {
                return Err(WireError::BadLength {
                    what: "transform",
                    len: tlen,
                    why: "Transform Length beyond the proposal or below 8",
                });
            }
            let tr = &t[..tlen];
            transforms.push(Transform {
                ttype: tr[4],
                id: be16(tr, 6),
                attributes: parse_attributes(&tr[8..])?,
            });
            t = &t[tlen..];
            let expect_last = if i + 1 == ntrans { 0 } else { 3 };
            if tlast != expect_last {
                return Err(WireError::BadField {
                    what: "transform",
                    field: "Last Substruc",
                    value: u64::from(tlast),
                });
            }
        }
        if !t.is_empty() {
            return Err(WireError::BadLength {
                what: "proposal",
                len,
                why: "octets after the last transform",
            });
        }
        props.push(Proposal {
            number: p[4],
            protocol: p[5],
            spi: p[8..8 + spi_size].to_vec(),
            transforms,
        });
        b = &b[len..];
        match last {
            0 => break,
            2 => continue,
            v => {
                return Err(WireError::BadField {
                    what: "proposal",
                    field: "Last Substruc",
                    value: u64::from(v),
                })
            }
        }
    }
    if !b.is_empty() {
        return Err(WireError::BadLength {
            what: "SA payload",
            len: b.len(),
            why: "octets after the last proposal",
        });
    }
    Ok(props)
}

fn parse_attributes(mut b: &[u8]) -> Result<Vec<Attribute>, WireError> {
    let mut attrs = Vec::new();
    while !b.is_empty() {
        check_len("transform attribute", b, 4)?;
        let t = be16(b, 0);
        if t & 0x8000 != 0 {
            attrs.push(Attribute::Tv {
                atype: t & 0x7fff,
                value: be16(b, 2),
            });
            b = &b[4..];
        } else {
            let len = be16(b, 2) as usize;
            check_len("transform attribute", b, 4 + len)?;
            attrs.push(Attribute::Tlv {
                atype: t,
                value: b[4..4 + len].to_vec(),
            });
            b = &b[4 + len..];
        }
    }
    Ok(attrs)
}

fn emit_proposals(props: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in props.iter().enumerate() {
        let start = out.len();
        let last = if i + 1 == props.len() { 0 } else { 2 };
        out.extend_from_slice(&[
            last,
            0,
            0,
            0,
            p.number,
            p.protocol,
            p.spi.len() as u8,
            p.transforms.len() as u8,
        ]);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            let tstart = out.len();
            let tlast = if j + 1 == p.transforms.len() { 0 } else { 3 };
            out.extend_from_slice(&[tlast, 0, 0, 0, t.ttype, 0]);
            out.extend_from_slice(&t.id.to_be_bytes());
            for a in &t.attributes {
                match a {
                    Attribute::Tv { atype, value } => {
                        out.extend_from_slice(&(atype | 0x8000).to_be_bytes());
                        out.extend_from_slice(&value.to_be_bytes());
                    }
                    Attribute::Tlv { atype, value } => {
                        out.extend_from_slice(&(atype & 0x7fff).to_be_bytes());
                        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                        out.extend_from_slice(value);
                    }
                }
            }
            let tlen = (out.len() - tstart) as u16;
            out[tstart + 2..tstart + 4].copy_from_slice(&tlen.to_be_bytes());
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn parse_ts(b: &[u8]) -> Result<Vec<TrafficSelector>, WireError> {
    check_len("TS payload", b, 4)?;
    let n = b[0] as usize;
    let mut rest = &b[4..];
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        check_len("traffic selector", rest, 8)?;
        let ts_type = rest[0];
        let len = be16(rest, 2) as usize;
        let alen = match ts_type {
            TS_IPV4_ADDR_RANGE => 4,
            TS_IPV6_ADDR_RANGE => 16,
            v => {
                return Err(WireError::BadField {
                    what: "traffic selector",
                    field: "TS Type",
                    value: u64::from(v),
                })
            }
        };
        if len != 8 + 2 * alen || rest.len() < len {
            return Err(WireError::BadLength {
                what: "traffic selector",
                len,
                why: "Selector Length does not match its TS Type",
            });
        }
        let addr = |off: usize| -> IpAddr {
            if alen == 4 {
                let a: [u8; 4] = rest[off..off + 4].try_into().unwrap_or([0; 4]);
                IpAddr::from(a)
            } else {
                let a: [u8; 16] = rest[off..off + 16].try_into().unwrap_or([0; 16]);
                IpAddr::from(a)
            }
        };
        out.push(TrafficSelector {
            ip_proto: rest[1],
            start_port: be16(rest, 4),
            end_port: be16(rest, 6),
            start_addr: addr(8),
            end_addr: addr(8 + alen),
        });
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(WireError::BadLength {
            what: "TS payload",
            len: b.len(),
            why: "octets after the last selector",
        });
    }
    Ok(out)
}

fn emit_ts(ts: &[TrafficSelector], out: &mut Vec<u8>) {
    out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
    for t in ts {
        let (ty, len) = match t.start_addr {
            IpAddr::V4(_) => (TS_IPV4_ADDR_RANGE, 16u16),
            IpAddr::V6(_) => (TS_IPV6_ADDR_RANGE, 40u16),
        };
        out.push(ty);
        out.push(t.ip_proto);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        for a in [t.start_addr, t.end_addr] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
    }
}

/// Reads the 4-octet big-endian value of an ESP SPI.
pub fn spi32(b: &[u8]) -> Option<u32> {
    (b.len() == 4).then(|| be32(b, 0))
}
