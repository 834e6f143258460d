//! OTLP receivers inside the test process, decoding with the `opentelemetry-proto` crate's types:
//! OTLP/HTTP (protobuf and JSON bodies) on `tiny_http`, OTLP/gRPC with the crate's tonic service.

use filament_tests::ReadSpan;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Decides which requests a receiver refuses (503 / UNAVAILABLE).
type Refuse = Box<dyn Fn(&ExportTraceServiceRequest) -> bool + Send + Sync>;

/// What a receiver got.
pub(crate) struct Received {
    requests: Mutex<Vec<ExportTraceServiceRequest>>,
    /// The headers (gRPC: metadata) of every request, names in lower case.
    headers: Mutex<Vec<Vec<(String, String)>>>,
    refused: AtomicUsize,
    refuse: Refuse,
}

impl Received {
    fn new(refuse: Refuse) -> Arc<Self> {
        Arc::new(Received {
            requests: Mutex::default(),
            headers: Mutex::default(),
            refused: AtomicUsize::new(0),
            refuse,
        })
    }

    /// Keeps a request, or refuses it; whether it was accepted.
    fn take(&self, request: ExportTraceServiceRequest) -> bool {
        if (self.refuse)(&request) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        self.requests.lock().unwrap().push(request);
        true
    }

    /// Every span accepted so far, with its resource and scope.
    pub(crate) fn spans(&self) -> Vec<ReadSpan> {
        let requests = self.requests.lock().unwrap();
        let mut spans = Vec::new();
        for request in requests.iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for scope_spans in &resource_spans.scope_spans {
                    let scope_name = scope_spans
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for span in &scope_spans.spans {
                        spans.push(ReadSpan {
                            span: span.clone(),
                            resource: resource.clone(),
                            scope_name: scope_name.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The value of a header in every HTTP request that had it.
    pub(crate) fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Requests accepted.
    pub(crate) fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Requests refused.
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// An OTLP/HTTP receiver on `127.0.0.1`.
pub(crate) struct HttpReceiver {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub(crate) received: Arc<Received>,
}

impl HttpReceiver {
    /// Accepts everything.
    pub(crate) fn start() -> Self {
        Self::refusing(|_| false)
    }

    /// Answers 503 to the requests `refuse` picks.
    pub(crate) fn refusing(
        refuse: impl Fn(&ExportTraceServiceRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind a receiver"));
        let received = Received::new(Box::new(refuse));
        let thread = {
            let (server, received) = (server.clone(), received.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let headers: Vec<(String, String)> = request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_owned(),
                            )
                        })
                        .collect();
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let json = header("content-type").contains("json");
                    let gzip = header("content-encoding") == "gzip";
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(request.as_reader(), &mut body).unwrap();
                    if gzip {
                        let mut plain = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(body.as_slice()),
                            &mut plain,
                        )
                        .expect("a gzip body");
                        body = plain;
                    }
                    received.headers.lock().unwrap().push(headers);
                    let decoded = if json {
                        serde_json::from_slice::<ExportTraceServiceRequest>(&body)
                            .map_err(|e| e.to_string())
                    } else {
                        ExportTraceServiceRequest::decode(body.as_slice())
                            .map_err(|e| e.to_string())
                    };
                    let response = match decoded.map(|d| received.take(d)) {
                        Err(error) => {
                            tiny_http::Response::from_data(error.into_bytes()).with_status_code(400)
                        }
                        Ok(true) => {
                            let body = ExportTraceServiceResponse::default().encode_to_vec();
                            tiny_http::Response::from_data(body)
                                .with_status_code(200)
                                .with_header(
                                    "Content-Type: application/x-protobuf"
                                        .parse::<tiny_http::Header>()
                                        .unwrap(),
                                )
                        }
                        Ok(false) => {
                            tiny_http::Response::from_data(Vec::new()).with_status_code(503)
                        }
                    };
                    let _ = request.respond(response);
                }
            })
        };
        HttpReceiver {
            server,
            thread: Some(thread),
            received,
        }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.server.server_addr().to_ip().unwrap())
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An OTLP/gRPC receiver on `127.0.0.1`, on a tokio runtime of its own.
pub(crate) struct GrpcReceiver {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    addr: SocketAddr,
    pub(crate) received: Arc<Received>,
}

struct Service(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let metadata: Vec<(String, String)> = request
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => Some((
                    key.as_str().to_owned(),
                    value.to_str().unwrap_or_default().to_owned(),
                )),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.0.headers.lock().unwrap().push(metadata);
        if self.0.take(request.into_inner()) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("refused by the test"))
        }
    }
}

impl GrpcReceiver {
    /// Accepts everything.
    pub(crate) fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Received::new(Box::new(|_| false));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Service(received.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        GrpcReceiver {
            runtime: Some(runtime),
            stop: Some(stop),
            addr,
            received,
        }
    }

    /// The URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// A port that accepts connections (the kernel completes them) and never answers.
pub(crate) fn silent_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A port where nothing listens: connections are refused.
pub(crate) fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}
