//! The IKE header (RFC 7296 §3.1).
//!
//! | Off | Len | Field |
//! |---:|---:|---|
//! | 0 | 8 | IKE SA Initiator's SPI |
//! | 8 | 8 | IKE SA Responder's SPI |
//! | 16 | 1 | Next Payload |
//! | 17 | 1 | Major (4 bits) / Minor (4 bits) Version |
//! | 18 | 1 | Exchange Type |
//! | 19 | 1 | Flags (R 0x20, V 0x10, I 0x08) |
//! | 20 | 4 | Message ID |
//! | 24 | 4 | Length (whole message, header included) |

use super::{be32, check_len, WireError};

/// Length of the fixed IKE header.
pub const HEADER_LEN: usize = 28;
/// Version octet of IKEv2.0.
pub const IKE_VERSION: u8 = 0x20;
/// Response flag.
pub const FLAG_R: u8 = 0x20;
/// Version flag (higher version supported).
pub const FLAG_V: u8 = 0x10;
/// Initiator flag (sender is the original initiator of the IKE SA).
pub const FLAG_I: u8 = 0x08;

/// A zero-copy view of an IKE message's header.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buf`, checking it holds a header and that the Length field
    /// equals the buffer length and the major version is 2.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        check_len("IKE header", b, HEADER_LEN)?;
        let h = Header { buf };
        let len = h.length() as usize;
        let have = h.buf.as_ref().len();
        if len != have {
            return Err(WireError::BadLength {
                what: "IKE message",
                len,
                why: "Length field differs from the datagram length",
            });
        }
        if h.version() >> 4 != 2 {
            return Err(WireError::BadField {
                what: "IKE header",
                field: "major version",
                value: u64::from(h.version() >> 4),
            });
        }
        Ok(h)
    }

    /// Wraps a buffer already known to hold at least [`HEADER_LEN`] octets
    /// without the Length and version checks (to answer a wrong version).
    /// Accessors panic on a shorter buffer; check the length first.
    pub fn new_unchecked(buf: T) -> Self {
        Header { buf }
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    pub fn spi_i(&self) -> [u8; 8] {
        let mut s = [0; 8];
        s.copy_from_slice(&self.b()[0..8]);
        s
    }

    pub fn spi_r(&self) -> [u8; 8] {
        let mut s = [0; 8];
        s.copy_from_slice(&self.b()[8..16]);
        s
    }

    pub fn next_payload(&self) -> u8 {
        self.b()[16]
    }

    pub fn version(&self) -> u8 {
        self.b()[17]
    }

    pub fn exchange_type(&self) -> u8 {
        self.b()[18]
    }

    pub fn flags(&self) -> u8 {
        self.b()[19]
    }

    pub fn message_id(&self) -> u32 {
        be32(self.b(), 20)
    }

    pub fn length(&self) -> u32 {
        be32(self.b(), 24)
    }

    /// The payload chain after the header.
    pub fn payload_octets(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
}

/// The IKE header as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    pub next_payload: u8,
    pub exchange_type: u8,
    pub flags: u8,
    pub message_id: u32,
    /// Whole message length.
    pub length: u32,
}

impl HeaderRepr {
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> HeaderRepr {
        HeaderRepr {
            spi_i: h.spi_i(),
            spi_r: h.spi_r(),
            next_payload: h.next_payload(),
            exchange_type: h.exchange_type(),
            flags: h.flags(),
            message_id: h.message_id(),
            length: h.length(),
        }
    }

    /// Writes the 28 header octets into `out[..28]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.spi_i);
        out[8..16].copy_from_slice(&self.spi_r);
        out[16] = self.next_payload;
        out[17] = IKE_VERSION;
        out[18] = self.exchange_type;
        out[19] = self.flags;
        out[20..24].copy_from_slice(&self.message_id.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_R != 0
    }

    pub fn is_initiator(&self) -> bool {
        self.flags & FLAG_I != 0
    }
}
