//! The OTLP/HTTP trace request (opentelemetry-proto's `trace/v1`, `common/v1`, `resource/v1`)
//! written straight as protobuf bytes: the handful of fields we send, with their numbers. No
//! protoc, no SDK, no message structs to fill and free per span: the export thread appends
//! each span's bytes to the batch (`encode`), and `body` frames the batch once.
//!
//! Proto3 as prost writes it: scalar fields equal to their default are left out, a set
//! message or oneof field is always written.

/// Field numbers.
pub mod tag {
    pub const SPAN_TRACE_ID: u32 = 1;
    pub const SPAN_SPAN_ID: u32 = 2;
    pub const SPAN_TRACE_STATE: u32 = 3;
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub const SPAN_NAME: u32 = 5;
    pub const SPAN_KIND: u32 = 6;
    pub const SPAN_START: u32 = 7;
    pub const SPAN_END: u32 = 8;
    pub const SPAN_ATTRIBUTES: u32 = 9;
    pub const SPAN_STATUS: u32 = 15;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    /// `ScopeSpans.spans`
    pub const SCOPE_SPANS_SPAN: u32 = 2;
}

pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

/// 0 unset, 1 ok, 2 error
pub const STATUS_ERROR: i32 = 2;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, tag: u32, wire: u32) {
    varint(out, u64::from(tag << 3 | wire));
}

/// A length-delimited field's size on the wire (for tags below 16: a one-byte key).
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// The key and length of a length-delimited field whose `len` bytes follow.
pub fn len_prefix(out: &mut Vec<u8>, tag: u32, len: usize) {
    key(out, tag, LEN);
    varint(out, len as u64);
}

/// A `bytes` or `string` field (left out when empty).
pub fn bytes(out: &mut Vec<u8>, tag: u32, v: &[u8]) {
    if !v.is_empty() {
        len_prefix(out, tag, v.len());
        out.extend_from_slice(v);
    }
}

/// A `string` field made of `parts` back to back (left out when empty).
pub fn string_parts(out: &mut Vec<u8>, tag: u32, parts: &[&str]) {
    let len = parts.iter().map(|p| p.len()).sum();
    if len > 0 {
        len_prefix(out, tag, len);
        for p in parts {
            out.extend_from_slice(p.as_bytes());
        }
    }
}

/// An `int32` field (left out when 0).
pub fn int32(out: &mut Vec<u8>, tag: u32, v: i32) {
    if v != 0 {
        key(out, tag, VARINT);
        // a negative int32 is sign-extended to ten bytes, as protobuf wants
        varint(out, i64::from(v) as u64);
    }
}

/// A `fixed64` field (left out when 0).
pub fn fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        key(out, tag, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `KeyValue` whose value is a string (`AnyValue.string_value`, 1).
pub fn kv_str(out: &mut Vec<u8>, tag: u32, k: &str, v: &str) {
    let any = len_field_size(v.len());
    len_prefix(out, tag, len_field_size(k.len()) + len_field_size(any));
    bytes(out, 1, k.as_bytes());
    len_prefix(out, 2, any);
    len_prefix(out, 1, v.len());
    out.extend_from_slice(v.as_bytes());
}

/// A `KeyValue` whose value is an integer (`AnyValue.int_value`, 3).
pub fn kv_int(out: &mut Vec<u8>, tag: u32, k: &str, v: i64) {
    let any = 1 + varint_len(v as u64);
    len_prefix(out, tag, len_field_size(k.len()) + len_field_size(any));
    bytes(out, 1, k.as_bytes());
    len_prefix(out, 2, any);
    key(out, 3, VARINT);
    varint(out, v as u64);
}

/// A `Status` message with code error and `message` (left out when empty).
pub fn status_error(out: &mut Vec<u8>, field: u32, message: &str) {
    let msg = if message.is_empty() {
        0
    } else {
        len_field_size(message.len())
    };
    // the code: a one-byte key and a one-byte varint
    len_prefix(out, field, msg + 2);
    bytes(out, tag::STATUS_MESSAGE, message.as_bytes());
    int32(out, tag::STATUS_CODE, STATUS_ERROR);
}

/// The fixed parts of every export: the `Resource` and `InstrumentationScope` messages.
pub struct Frame {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Frame {
    pub fn new<'a>(resource: impl IntoIterator<Item = (&'a str, &'a str)>) -> Frame {
        let mut r = Vec::new();
        for (k, v) in resource {
            kv_str(&mut r, 1, k, v);
        }
        let mut scope = Vec::new();
        bytes(&mut scope, 1, b"cc-gateway");
        bytes(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
        Frame { resource: r, scope }
    }

    /// The request body of one export: `spans` (each already a `ScopeSpans.spans` field)
    /// under one resource and one scope.
    pub fn body(&self, spans: &[u8]) -> Vec<u8> {
        let scope_spans = len_field_size(self.scope.len()) + spans.len();
        let resource_spans = len_field_size(self.resource.len()) + len_field_size(scope_spans);
        let mut out = Vec::with_capacity(len_field_size(resource_spans));
        // ExportTraceServiceRequest.resource_spans
        len_prefix(&mut out, 1, resource_spans);
        // ResourceSpans.resource
        len_prefix(&mut out, 1, self.resource.len());
        out.extend_from_slice(&self.resource);
        // ResourceSpans.scope_spans
        len_prefix(&mut out, 2, scope_spans);
        // ScopeSpans.scope
        len_prefix(&mut out, 1, self.scope.len());
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(spans);
        out
    }
}

/// The messages as prost would decode them, to check the bytes above against an independent
/// implementation.
#[cfg(test)]
pub mod decode {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
    }

    impl Span {
        pub fn attr(&self, k: &str) -> Option<Value> {
            self.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone()?.value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode::{self, Value};
    use super::*;
    use prost::Message;

    #[test]
    fn varint_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn prost_reads_what_we_write() {
        let mut spans = Vec::new();
        for i in 0..3u8 {
            let mut s = Vec::new();
            bytes(&mut s, tag::SPAN_TRACE_ID, &[i + 1; 16]);
            bytes(&mut s, tag::SPAN_SPAN_ID, &[9; 8]);
            string_parts(&mut s, tag::SPAN_NAME, &["GET", " ", "api"]);
            int32(&mut s, tag::SPAN_KIND, KIND_SERVER);
            fixed64(&mut s, tag::SPAN_START, 1_700_000_000_000_000_000);
            fixed64(&mut s, tag::SPAN_END, 0);
            kv_str(&mut s, tag::SPAN_ATTRIBUTES, "k", &"v".repeat(200));
            kv_str(&mut s, tag::SPAN_ATTRIBUTES, "empty", "");
            kv_int(&mut s, tag::SPAN_ATTRIBUTES, "n", 503);
            kv_int(&mut s, tag::SPAN_ATTRIBUTES, "neg", -1);
            len_prefix(&mut spans, tag::SCOPE_SPANS_SPAN, s.len());
            spans.extend_from_slice(&s);
        }
        let frame = Frame::new([("service.name", "edge"), ("a", "b")]);
        let got = decode::ExportTraceServiceRequest::decode(&frame.body(&spans)[..]).unwrap();
        let rs = &got.resource_spans[0];
        assert_eq!(rs.resource.as_ref().unwrap().attributes.len(), 2);
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "cc-gateway");
        assert_eq!(ss.spans.len(), 3);
        let s = &ss.spans[2];
        assert_eq!(s.trace_id, vec![3; 16]);
        assert_eq!(s.name, "GET api");
        assert_eq!(s.kind, KIND_SERVER);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano, 0);
        assert_eq!(s.attr("k"), Some(Value::String("v".repeat(200))));
        assert_eq!(s.attr("empty"), Some(Value::String(String::new())));
        assert_eq!(s.attr("n"), Some(Value::Int(503)));
        assert_eq!(s.attr("neg"), Some(Value::Int(-1)));
    }
}
