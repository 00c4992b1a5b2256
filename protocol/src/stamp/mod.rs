//! STAMP (RFC 8762) test packets, the RFC 8972 TLV framing and the sans-IO
//! STAMP reflection builder.
//!
//! * [`packet`]: sender and reflector base packets, unauthenticated (44
//!   octets) and authenticated (112 octets, HMAC-SHA-256-128 at 96 over
//!   octets 0–95, computed by the caller), with the RFC 8972 SSID;
//! * [`tlv`]: RFC 8972 §4 TLV view, iterator, writer and the reflector's
//!   in-place framing pass;
//! * [`tlvs`]: typed values of every registered TLV (RFC 8972, RFC 9503,
//!   RFC 9534) and the reflector's fill functions;
//! * [`validate`]: a conformance checker for observed peer traffic;
//! * [`reflect`]: [`reflect_stamp`] (stateless or stateful) and [`set_t3`].
//!
//! Unauthenticated STAMP is wire-compatible with TWAMP Light; authenticated
//! STAMP is not compatible with authenticated TWAMP (HMAC-SHA-256, no
//! encryption). There is no encrypted mode (RFC 8762 §4.5).

pub mod packet;
pub mod reflect;
pub mod tlv;
pub mod tlvs;
pub mod validate;

pub use packet::{ReflectorPacket, ReflectorRepr, SenderPacket, SenderRepr, StampLayout};
pub use reflect::{reflect_stamp, set_t3, ReflectorMode, StampFormat};
pub use tlv::{
    process_tlvs_in_place, FramingOnly, Tlv, TlvEntry, TlvError, TlvHandler, TlvIter, TlvRepr,
    TlvSummary, TlvVerdict, TlvWriter,
};
pub use tlvs::{
    ClassOfService, ClassOfServiceRepr, DirectMeasurement, DirectMeasurementRepr, FollowUpRepr,
    FollowUpTelemetry, Location, LocationContext, StampTlv, SyncSource, TimestampInfo,
    TimestampInfoRepr, TimestampMethod, TlvValueError,
};
