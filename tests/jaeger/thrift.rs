//! Receivers for the legacy Jaeger transports inside the test process: an agent (UDP, compact
//! thrift `Agent.emitBatch`) and a collector (HTTP `POST /api/traces`, binary thrift `Batch`), each
//! decoding with the Jaeger thrift IDL's field ids (`jaeger.thrift`, `agent.thrift`) read through
//! the `thrift` crate's protocols. Decoded spans are mapped onto OTLP's `Span` the way Jaeger's own
//! OTLP translation does (tags → attributes, `span.kind`, `otel.status_*`, logs → events, process
//! tags → resource), so the same assertions hold for every transport.

use filament_tests::ReadSpan;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thrift::protocol::{
    TBinaryInputProtocol, TCompactInputProtocol, TInputProtocol, TMessageType, TType,
};

/// A thrift value read without a schema: what the IDL's field ids are then looked up in.
#[derive(Debug, Clone)]
enum Thrift {
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Struct(BTreeMap<i16, Thrift>),
    List(Vec<Thrift>),
}

fn read(p: &mut dyn TInputProtocol, ttype: TType) -> thrift::Result<Thrift> {
    Ok(match ttype {
        TType::Bool => Thrift::Bool(p.read_bool()?),
        TType::I08 => Thrift::Int(p.read_i8()?.into()),
        TType::I16 => Thrift::Int(p.read_i16()?.into()),
        TType::I32 => Thrift::Int(p.read_i32()?.into()),
        TType::I64 => Thrift::Int(p.read_i64()?),
        TType::Double => Thrift::Double(p.read_double()?),
        TType::String => Thrift::Bytes(p.read_bytes()?),
        TType::Struct => read_struct(p)?,
        TType::List => {
            let list = p.read_list_begin()?;
            let items = (0..list.size)
                .map(|_| read(p, list.element_type))
                .collect::<thrift::Result<_>>()?;
            p.read_list_end()?;
            Thrift::List(items)
        }
        TType::Set => {
            let set = p.read_set_begin()?;
            let items = (0..set.size)
                .map(|_| read(p, set.element_type))
                .collect::<thrift::Result<_>>()?;
            p.read_set_end()?;
            Thrift::List(items)
        }
        other => panic!("a thrift type the Jaeger IDL does not use: {other:?}"),
    })
}

fn read_struct(p: &mut dyn TInputProtocol) -> thrift::Result<Thrift> {
    p.read_struct_begin()?;
    let mut fields = BTreeMap::new();
    loop {
        let field = p.read_field_begin()?;
        if field.field_type == TType::Stop {
            break;
        }
        let id = field.id.expect("a field id");
        fields.insert(id, read(p, field.field_type)?);
        p.read_field_end()?;
    }
    p.read_struct_end()?;
    Ok(Thrift::Struct(fields))
}

impl Thrift {
    fn field(&self, id: i16) -> Option<&Thrift> {
        match self {
            Thrift::Struct(fields) => fields.get(&id),
            _ => None,
        }
    }
    fn int(&self, id: i16) -> i64 {
        match self.field(id) {
            Some(Thrift::Int(i)) => *i,
            None => 0,
            other => panic!("field {id} is not an integer: {other:?}"),
        }
    }
    fn string(&self, id: i16) -> String {
        match self.field(id) {
            Some(Thrift::Bytes(b)) => String::from_utf8(b.clone()).expect("UTF-8"),
            None => String::new(),
            other => panic!("field {id} is not a string: {other:?}"),
        }
    }
    fn list(&self, id: i16) -> &[Thrift] {
        match self.field(id) {
            Some(Thrift::List(items)) => items,
            None => &[],
            other => panic!("field {id} is not a list: {other:?}"),
        }
    }
}

/// `Tag` (1 key, 2 vType, 3 vStr, 4 vDouble, 5 vBool, 6 vLong, 7 vBinary) as an OTLP attribute.
fn tag(tag: &Thrift) -> KeyValue {
    let value = match tag.int(2) {
        0 => any_value::Value::StringValue(tag.string(3)),
        1 => match tag.field(4) {
            Some(Thrift::Double(d)) => any_value::Value::DoubleValue(*d),
            other => panic!("vDouble: {other:?}"),
        },
        2 => match tag.field(5) {
            Some(Thrift::Bool(b)) => any_value::Value::BoolValue(*b),
            other => panic!("vBool: {other:?}"),
        },
        3 => any_value::Value::IntValue(tag.int(6)),
        4 => match tag.field(7) {
            Some(Thrift::Bytes(b)) => any_value::Value::BytesValue(b.clone()),
            other => panic!("vBinary: {other:?}"),
        },
        other => panic!("unknown TagType {other}"),
    };
    KeyValue {
        key: tag.string(1),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// A `Batch` (1 process, 2 spans) as OTLP spans.
fn batch_spans(batch: &Thrift) -> Vec<ReadSpan> {
    let process = batch.field(1).expect("a process");
    let mut resource: Vec<KeyValue> = process.list(2).iter().map(tag).collect();
    resource.retain(|kv| kv.key != "service.name");
    resource.push(KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(process.string(1))),
        }),
        ..KeyValue::default()
    });
    batch
        .list(2)
        .iter()
        .map(|s| jaeger_span(s, &resource))
        .collect()
}

/// A Jaeger `Span` (1 traceIdLow, 2 traceIdHigh, 3 spanId, 4 parentSpanId, 5 operationName,
/// 7 flags, 8 startTime µs, 9 duration µs, 10 tags, 11 logs) as OTLP's.
fn jaeger_span(s: &Thrift, resource: &[KeyValue]) -> ReadSpan {
    let mut trace_id = s.int(2).to_be_bytes().to_vec();
    trace_id.extend(s.int(1).to_be_bytes());
    let parent = s.int(4);
    let mut kind = span::SpanKind::Internal;
    let mut status = Status::default();
    let mut scope_name = String::new();
    let mut attributes = Vec::new();
    for kv in s.list(10).iter().map(tag) {
        let text = match &kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        match kv.key.as_str() {
            "span.kind" => {
                kind = match text.as_str() {
                    "client" => span::SpanKind::Client,
                    "server" => span::SpanKind::Server,
                    "producer" => span::SpanKind::Producer,
                    "consumer" => span::SpanKind::Consumer,
                    _ => span::SpanKind::Internal,
                }
            }
            "otel.status_code" => {
                status.code = if text == "ERROR" { 2 } else { 1 };
            }
            "otel.status_description" => status.message = text,
            "otel.library.name" => scope_name = text,
            "otel.library.version" | "error" => {}
            _ => attributes.push(kv),
        }
    }
    let start = s.int(8) as u64 * 1000;
    let events = s
        .list(11)
        .iter()
        .map(|log| {
            let mut fields: Vec<KeyValue> = log.list(2).iter().map(tag).collect();
            let name = fields
                .iter()
                .position(|kv| kv.key == "event")
                .map(|i| fields.remove(i))
                .and_then(|kv| match kv.value.and_then(|v| v.value) {
                    Some(any_value::Value::StringValue(s)) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            span::Event {
                time_unix_nano: log.int(1) as u64 * 1000,
                name,
                attributes: fields,
                dropped_attributes_count: 0,
            }
        })
        .collect();
    ReadSpan {
        span: Span {
            trace_id,
            span_id: s.int(3).to_be_bytes().to_vec(),
            parent_span_id: if parent == 0 {
                Vec::new()
            } else {
                parent.to_be_bytes().to_vec()
            },
            flags: s.int(7) as u32,
            name: s.string(5),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + s.int(9) as u64 * 1000,
            attributes,
            events,
            status: Some(status),
            ..Span::default()
        },
        resource: resource.to_vec(),
        scope_name,
    }
}

/// What a legacy receiver got.
#[derive(Default)]
pub(crate) struct Received(Mutex<Vec<ReadSpan>>);

impl Received {
    pub(crate) fn spans(&self) -> Vec<ReadSpan> {
        self.0.lock().unwrap().clone()
    }
}

/// A Jaeger agent on a UDP port of `127.0.0.1`.
pub(crate) struct AgentReceiver {
    port: u16,
    datagrams: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub(crate) received: Arc<Received>,
}

impl AgentReceiver {
    pub(crate) fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let received = Arc::new(Received::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let datagrams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (received, stop, datagrams) = (received.clone(), stop.clone(), datagrams.clone());
            std::thread::spawn(move || {
                let mut packet = vec![0u8; 65_536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Ok(n) = socket.recv(&mut packet) else {
                        continue;
                    };
                    datagrams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut p = TCompactInputProtocol::new(&packet[..n]);
                    let message = p.read_message_begin().expect("a thrift message");
                    assert_eq!(message.name, "emitBatch");
                    assert_eq!(message.message_type, TMessageType::OneWay);
                    let args = read_struct(&mut p).expect("emitBatch_args");
                    let batch = args.field(1).expect("emitBatch's batch");
                    received.0.lock().unwrap().extend(batch_spans(batch));
                }
            })
        };
        AgentReceiver {
            port,
            datagrams,
            stop,
            thread: Some(thread),
            received,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams received.
    pub(crate) fn datagrams(&self) -> usize {
        self.datagrams.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AgentReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Jaeger collector's `POST /api/traces` on `127.0.0.1`.
pub(crate) struct CollectorReceiver {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub(crate) received: Arc<Received>,
}

impl CollectorReceiver {
    pub(crate) fn start() -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let received = Arc::new(Received::default());
        let thread = {
            let (server, received) = (server.clone(), received.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(request.as_reader(), &mut body).unwrap();
                    let status = if request.url() != "/api/traces" {
                        404
                    } else {
                        let mut p = TBinaryInputProtocol::new(&body[..], true);
                        let batch = read_struct(&mut p).expect("a binary thrift Batch");
                        received.0.lock().unwrap().extend(batch_spans(&batch));
                        202
                    };
                    let _ = request.respond(tiny_http::Response::empty(status));
                }
            })
        };
        CollectorReceiver {
            server,
            thread: Some(thread),
            received,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!(
            "http://{}/api/traces",
            self.server.server_addr().to_ip().unwrap()
        )
    }
}

impl Drop for CollectorReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
