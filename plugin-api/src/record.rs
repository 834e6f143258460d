//! The span record: a finished span as the host hands it to a plugin.
//!
//! Everything here is a *borrowed view*: strings are [`RStr`], lists are [`RSlice`], all valid for the
//! duration of the call that receives them. A processor that keeps data past the call copies what it
//! needs (`to_string()`, `to_vec()`). Borrowing is what keeps the boundary cheap: the host builds one
//! small array of attribute views per span instead of copying every string.

use abi_stable::{
    StableAbi,
    std_types::{RSlice, RStr},
};
use std::fmt;

/// A 16-byte W3C trace id.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte W3C span id; all zeros means "none" (for a root span's parent).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Whether this is the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl SpanId {
    /// Whether this is the invalid all-zero id (no parent).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// What a span describes, as OpenTelemetry defines it.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// An operation internal to the process.
    Internal,
    /// The server side of a synchronous request.
    Server,
    /// The client side of a synchronous request.
    Client,
    /// The sender of an asynchronous message (a task submission).
    Producer,
    /// The receiver of an asynchronous message (a task execution).
    Consumer,
}

/// An attribute value: the types OpenTelemetry allows on spans.
#[repr(C, u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    I64(i64),
    /// A double.
    F64(f64),
    /// A UTF-8 string.
    Str(RStr<'a>),
    /// An array of booleans.
    BoolArray(RSlice<'a, bool>),
    /// An array of integers.
    I64Array(RSlice<'a, i64>),
    /// An array of doubles.
    F64Array(RSlice<'a, f64>),
    /// An array of strings.
    StrArray(RSlice<'a, RStr<'a>>),
}

/// One attribute: a key and its value.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct KeyValue<'a> {
    /// The attribute's name, e.g. `filament.task_id`.
    pub key: RStr<'a>,
    /// The attribute's value.
    pub value: Value<'a>,
}

impl<'a> KeyValue<'a> {
    /// An attribute from a key and a value.
    pub fn new(key: &'a str, value: Value<'a>) -> Self {
        KeyValue {
            key: key.into(),
            value,
        }
    }
}

/// Finds the value of `key` in a list of attributes.
pub fn find_attribute<'a>(attributes: &[KeyValue<'a>], key: &str) -> Option<Value<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value)
}

/// A timestamped event recorded on a span (an `exception`, a log line).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The event's name.
    pub name: RStr<'a>,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its attributes.
    pub attributes: RSlice<'a, KeyValue<'a>>,
    /// Attributes dropped by the span limits.
    pub dropped_attributes_count: u32,
}

/// A link from this span to a span of another (or the same) trace.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Link<'a> {
    /// The linked span's trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
    /// The linked span's W3C trace flags.
    pub trace_flags: u8,
    /// The linked span's W3C `tracestate` header value; empty when there is none.
    pub trace_state: RStr<'a>,
    /// Whether the linked span context came from another process.
    pub is_remote: bool,
    /// The link's attributes.
    pub attributes: RSlice<'a, KeyValue<'a>>,
    /// Attributes dropped by the span limits.
    pub dropped_attributes_count: u32,
}

/// How a span ended.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// Not set by the instrumentation.
    Unset,
    /// Explicitly marked successful.
    Ok,
    /// Failed.
    Error,
}

/// A span's status: a code and, for errors, a description.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status<'a> {
    /// The status code.
    pub code: StatusCode,
    /// The description; empty unless the code is [`StatusCode::Error`].
    pub description: RStr<'a>,
}

/// The instrumentation scope (the tracer) that made a span.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The tracer's name, e.g. `filament` or the user's module path.
    pub name: RStr<'a>,
    /// The tracer's version; empty when there is none.
    pub version: RStr<'a>,
    /// The schema URL; empty when there is none.
    pub schema_url: RStr<'a>,
    /// The scope's attributes.
    pub attributes: RSlice<'a, KeyValue<'a>>,
}

/// The resource (the process) that made a span.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Resource<'a> {
    /// The resource's attributes (`service.name`, `process.pid`, …).
    pub attributes: RSlice<'a, KeyValue<'a>>,
    /// The schema URL; empty when there is none.
    pub schema_url: RStr<'a>,
    /// Names this resource within the process, so that a processor can cache what it derives
    /// from it: spans with equal non-zero ids have equal resources. 0 when the host does not say.
    pub id: u64,
}

/// A finished span, borrowed for the duration of one call.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct SpanRecord<'a> {
    /// The trace the span belongs to.
    pub trace_id: TraceId,
    /// The span's own id.
    pub span_id: SpanId,
    /// The parent span's id; all zeros for a root span.
    pub parent_span_id: SpanId,
    /// Whether the parent span context came from another process (e.g. a task's submitter).
    pub parent_is_remote: bool,
    /// The span's W3C trace flags (bit 0: sampled).
    pub trace_flags: u8,
    /// The W3C `tracestate` header value; empty when there is none.
    pub trace_state: RStr<'a>,
    /// The span's name.
    pub name: RStr<'a>,
    /// The span's kind.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_time_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch (0 in `on_start`).
    pub end_time_unix_nano: u64,
    /// The span's attributes.
    pub attributes: RSlice<'a, KeyValue<'a>>,
    /// Attributes dropped by the span limits.
    pub dropped_attributes_count: u32,
    /// The span's events.
    pub events: RSlice<'a, Event<'a>>,
    /// Events dropped by the span limits.
    pub dropped_events_count: u32,
    /// The span's links.
    pub links: RSlice<'a, Link<'a>>,
    /// Links dropped by the span limits.
    #[cfg(not(filament_abi_mismatch_test))]
    pub dropped_links_count: u32,
    // A deliberately incompatible layout, for the test that proves mismatched hooks are refused.
    // Only ever set by that test, in a build of its own (`--cfg filament_abi_mismatch_test`).
    #[cfg(filament_abi_mismatch_test)]
    #[allow(missing_docs)]
    pub dropped_links_count: u64,
    /// How the span ended.
    pub status: Status<'a>,
    /// The tracer that made the span.
    pub scope: Scope<'a>,
    /// The process that made the span.
    pub resource: Resource<'a>,
}

impl<'a> SpanRecord<'a> {
    /// The value of one of the span's attributes.
    pub fn attribute(&self, key: &str) -> Option<Value<'a>> {
        find_attribute(self.attributes.as_slice(), key)
    }

    /// The span's duration in nanoseconds (0 if it has not ended).
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }
}
