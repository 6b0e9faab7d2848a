//! Upstream clusters of leaf model servers: routing by model name, endpoint selection, short
//! ejection of endpoints that refuse connections, timeouts, and the one attempt loop every
//! request goes through. HTTP/1.1 clusters are served by the lean client ([`h1`]) on one pool
//! per endpoint, whatever transport the client came in on; h2c clusters by hyper's client
//! (one multiplexed connection per endpoint).

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::{Histogram, IntCounter};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{ms, Balance, ClusterConfig, Compression, Config, UpstreamProtocol};
use crate::metrics::Metrics;
use crate::signatures::LiveSignatures;

pub mod h1;

use h1::{BadResponse, ResponseHead};

/// Why a request could not be answered by its cluster.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every endpoint refused or timed out the TCP connection.
    #[error("no endpoint of upstream `{upstream}` accepted a connection (last tried {endpoint}: {cause})")]
    Unreachable {
        /// Cluster name.
        upstream: String,
        /// Last endpoint tried.
        endpoint: String,
        /// What the connection attempt reported.
        cause: String,
    },
    /// The response headers did not arrive in time.
    #[error("upstream `{upstream}` ({endpoint}) did not answer within {timeout_ms} ms")]
    Timeout {
        /// Cluster name.
        upstream: String,
        /// Endpoint that was asked.
        endpoint: String,
        /// The configured request timeout.
        timeout_ms: u64,
    },
    /// The connection failed after the request was sent (reset, malformed response).
    #[error("upstream `{upstream}` ({endpoint}) failed: {cause}")]
    Transport {
        /// Cluster name.
        upstream: String,
        /// Endpoint that was asked.
        endpoint: String,
        /// What hyper reported.
        cause: String,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// All clusters plus the model → cluster routing table.
pub struct Upstreams {
    /// Clusters in configuration order.
    clusters: Vec<Cluster>,
    /// Exact model names, checked before globs.
    exact: HashMap<String, usize>,
    /// Glob patterns in configuration order.
    globs: Vec<(String, usize)>,
    /// Index of the cluster for everything unclaimed.
    default: usize,
}

impl Upstreams {
    /// Builds clients for a validated configuration.
    pub fn new(config: &Config, metrics: &Metrics) -> Self {
        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        let mut default = 0;
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cluster)| {
                if cluster.name == config.default_cluster {
                    default = i;
                }
                for pattern in &cluster.models {
                    if pattern.contains(['*', '?']) {
                        globs.push((pattern.clone(), i));
                    } else {
                        exact.insert(pattern.clone(), i);
                    }
                }
                Cluster::new(cluster, metrics)
            })
            .collect();
        Self {
            clusters,
            exact,
            globs,
            default,
        }
    }

    /// The cluster serving `model` (exact name, then the first matching glob, then the default).
    pub fn route(&self, model: Option<&str>) -> &Cluster {
        let index = model
            .and_then(|m| {
                self.exact.get(m).copied().or_else(|| {
                    self.globs
                        .iter()
                        .find(|(g, _)| glob_match(g, m))
                        .map(|&(_, i)| i)
                })
            })
            .unwrap_or(self.default);
        &self.clusters[index]
    }

    /// Every cluster, in configuration order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// A view of every cluster for `/status`.
    pub fn status(&self) -> Vec<ClusterStatus> {
        self.clusters.iter().map(Cluster::status).collect()
    }
}

/// Matches `*` (any run, including empty) and `?` (one character).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ni = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One leaf server address with its live state.
struct Endpoint {
    /// `host:port` used for the URI (and `Host`).
    authority: Authority,
    /// Requests sent and not yet answered (for least-outstanding).
    outstanding: AtomicUsize,
    /// Milliseconds since `Cluster::epoch` before which the endpoint is skipped.
    ejected_until_ms: AtomicU64,
    /// Idle HTTP/1.1 connections to this endpoint.
    pool: Arc<Pool>,
}

/// One endpoint's idle HTTP/1.1 connections, most recently used last, with when they went
/// idle. A connection goes back only when its last answer ended exactly at its framing.
struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    /// `max_idle_per_endpoint`.
    max_idle: usize,
}

/// A connection to one endpoint, lent for one exchange.
pub struct LeafConnection {
    /// The socket, after the response head (and maybe some of the body) was read.
    pub stream: TcpStream,
    /// Where it goes back once its answer was read cleanly.
    pool: Arc<Pool>,
}

impl LeafConnection {
    /// Returns a connection whose answer was read completely and exactly to its pool.
    pub fn release(self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.pool.max_idle {
            idle.push((self.stream, Instant::now()));
        }
    }
}

/// A request for the lean HTTP/1.1 client, its head already planned by the lifecycle.
pub struct Outgoing<'a> {
    /// Method token.
    pub method: &'a str,
    /// Origin-form target, query included.
    pub target: &'a str,
    /// `lines` holds the client's `Host` (`preserve_host`); otherwise the endpoint's is sent.
    pub host_kept: bool,
    /// Header lines, each ending in CRLF, with the final empty line.
    pub lines: &'a [u8],
    /// The body.
    pub body: &'a [u8],
    /// The answer has no body whatever its head says (a `HEAD` request).
    pub bodiless_answer: bool,
}

/// Idle pooled connections older than this are closed rather than used (as hyper's pool).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A named group of interchangeable leaves with its pooled client and settings.
pub struct Cluster {
    /// Name from the configuration (metrics label, error messages).
    pub name: String,
    /// Leaf endpoints.
    endpoints: Vec<Endpoint>,
    /// Endpoint selection policy.
    balance: Balance,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// hyper's client, for h2c clusters only.
    h2c: Option<Client<HttpConnector, BoxBody<Bytes, h1::BoxError>>>,
    /// Time allowed until response headers.
    request_timeout: Duration,
    /// How long a refusing endpoint is skipped.
    eject: Duration,
    /// Whether the client's `Host` header is kept.
    pub preserve_host: bool,
    /// Request body encoding towards this cluster.
    pub compression: Compression,
    /// Wire protocol towards the leaves.
    protocol: UpstreamProtocol,
    /// Time allowed to open a connection.
    connect_timeout: Duration,
    /// Reference point for ejection deadlines.
    epoch: Instant,
    /// Pre-resolved metric handles for this cluster.
    stats: ClusterStats,
    /// Live signatures learned from these leaves (`discover_signatures`/`verify_signatures`).
    pub signatures: Option<LiveSignatures>,
}

/// Metric children for one cluster, resolved once at start-up.
struct ClusterStats {
    /// Responses by status class 1xx..5xx (index = class - 1).
    responses: [IntCounter; 5],
    duration: Histogram,
    connect_errors: IntCounter,
    timeouts: IntCounter,
    transport_errors: IntCounter,
}

/// What `/status` shows of a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// Endpoints with their state.
    pub endpoints: Vec<EndpointStatus>,
}

/// What `/status` shows of an endpoint.
#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    /// `host:port`.
    pub address: String,
    /// Requests waiting for an answer.
    pub outstanding: usize,
    /// Whether it is being skipped after refusing a connection.
    pub ejected: bool,
}

impl Cluster {
    fn new(config: &ClusterConfig, metrics: &Metrics) -> Self {
        let h2c = (config.protocol == UpstreamProtocol::H2c).then(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(ms(config.connect_timeout_ms)));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(config.max_idle_per_endpoint)
                .http2_only(true)
                .build(connector)
        });
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|url| crate::config::parse_endpoint(url).ok())
            .map(|authority| Endpoint {
                authority,
                outstanding: AtomicUsize::new(0),
                ejected_until_ms: AtomicU64::new(0),
                pool: Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                    max_idle: config.max_idle_per_endpoint,
                }),
            })
            .collect();
        let name = config.name.clone();
        let class = |c: &str| {
            metrics
                .upstream_requests
                .with_label_values(&[name.as_str(), c])
        };
        let error = |kind: &str| {
            metrics
                .upstream_errors
                .with_label_values(&[name.as_str(), kind])
        };
        let stats = ClusterStats {
            responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics
                .upstream_duration
                .with_label_values(&[name.as_str()]),
            connect_errors: error("connect"),
            timeouts: error("timeout"),
            transport_errors: error("transport"),
        };
        Self {
            name,
            endpoints,
            balance: config.balance,
            next: AtomicUsize::new(0),
            h2c,
            request_timeout: ms(config.request_timeout_ms),
            eject: ms(config.eject_ms),
            preserve_host: config.preserve_host,
            compression: config.compression,
            protocol: config.protocol,
            connect_timeout: ms(config.connect_timeout_ms),
            epoch: Instant::now(),
            stats,
            signatures: (config.discover_signatures || config.verify_signatures)
                .then(|| LiveSignatures::new(config, &metrics.signatures)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Endpoint indices in the order to try: healthy ones from the balancer's choice onwards,
    /// then ejected ones (better a refused connection than a 502 without trying).
    fn attempt_order(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::LeastOutstanding => {
                let offset = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (k + offset) % n)
                    .min_by_key(|&i| self.endpoints[i].outstanding.load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
        };
        let now = self.now_ms();
        let (mut healthy, ejected): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .partition(|&i| self.endpoints[i].ejected_until_ms.load(Ordering::Relaxed) <= now);
        healthy.extend(ejected);
        healthy.into_iter().map(|i| &self.endpoints[i])
    }

    /// One attempt against `endpoint`, with the rules every attempt follows: counted as
    /// outstanding, bounded by `timeout`, recorded in the metrics. Only a connection
    /// that could not be opened lets the caller go on to the next endpoint of
    /// [`Cluster::attempt_order`] (the request was then never sent, so trying again is safe for
    /// any method); any other failure, and a timeout, is the answer.
    async fn attempt<T>(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<(T, u16), Attempt>>,
    ) -> Step<T> {
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, work).await;
        endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok((answer, status))) => {
                self.answered(started, status);
                Step::Done(Ok(answer))
            }
            Ok(Err(Attempt::Connect(cause))) => Step::Next(self.connect_failed(endpoint, cause)),
            Ok(Err(Attempt::Failed(cause))) => {
                Step::Done(Err(self.transport_failed(endpoint, cause)))
            }
            Err(_elapsed) => Step::Done(Err(self.timed_out(endpoint, timeout))),
        }
    }

    /// Sends a request to an h2c cluster with hyper's client, its head being the same header
    /// `lines` the lean client would send and its body a fresh one from `body` for each
    /// attempt; `None` for HTTP/1.1 clusters, which [`Cluster::exchange`] serves. `deadline`
    /// (a gRPC client's `grpc-timeout`) shortens the cluster's `request_timeout_ms`.
    pub async fn send_h2c(
        &self,
        method: &http::Method,
        target: Option<&PathAndQuery>,
        lines: &[u8],
        body: &(dyn Fn() -> BoxBody<Bytes, h1::BoxError> + Sync),
        deadline: Option<Duration>,
    ) -> Option<Result<Response<Incoming>, UpstreamError>> {
        let client = self.h2c.as_ref()?;
        let path = target
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let headers = match h1::header_map(lines) {
            Ok(headers) => headers,
            Err(e) => return Some(Err(self.malformed("-", e.to_string()))),
        };
        let mut refused = None;
        for endpoint in self.attempt_order() {
            let mut request = Request::new(body());
            *request.method_mut() = method.clone();
            // Built from parts that were already valid; cannot fail.
            *request.uri_mut() = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(endpoint.authority.clone())
                .path_and_query(path.clone())
                .build()
                .unwrap_or_default();
            *request.headers_mut() = headers.clone();
            let work = async {
                match client.request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        Ok((response, status))
                    }
                    Err(e) if e.is_connect() => Err(Attempt::Connect(error_chain(&e))),
                    Err(e) => Err(Attempt::Failed(error_chain(&e))),
                }
            };
            let timeout = deadline.map_or(self.request_timeout, |d| d.min(self.request_timeout));
            match self.attempt(endpoint, timeout, work).await {
                Step::Done(result) => return Some(result),
                Step::Next(failure) => refused = Some(failure),
            }
        }
        Some(Err(self.unreachable(refused)))
    }

    /// An answer that arrived but cannot be passed on.
    pub fn malformed(&self, endpoint: &str, cause: String) -> UpstreamError {
        self.stats.transport_errors.inc();
        UpstreamError::Transport {
            upstream: self.name.clone(),
            endpoint: endpoint.to_owned(),
            cause,
        }
    }

    /// Counts an answer (response headers arrived) in the cluster's metrics.
    fn answered(&self, started: Instant, status: u16) {
        self.stats.duration.observe(started.elapsed().as_secs_f64());
        let class = (status / 100).clamp(1, 5) as usize;
        self.stats.responses[class - 1].inc();
    }

    /// Ejects an endpoint that refused a connection; what to report if no endpoint accepts.
    fn connect_failed(&self, endpoint: &Endpoint, cause: String) -> (String, String) {
        self.stats.connect_errors.inc();
        let until = self.now_ms() + self.eject.as_millis() as u64;
        endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(upstream = %self.name, endpoint = %endpoint.authority, %cause, "connect failed; endpoint ejected");
        (endpoint.authority.to_string(), cause)
    }

    fn transport_failed(&self, endpoint: &Endpoint, cause: String) -> UpstreamError {
        self.stats.transport_errors.inc();
        UpstreamError::Transport {
            upstream: self.name.clone(),
            endpoint: endpoint.authority.to_string(),
            cause,
        }
    }

    fn timed_out(&self, endpoint: &Endpoint, timeout: Duration) -> UpstreamError {
        self.stats.timeouts.inc();
        UpstreamError::Timeout {
            upstream: self.name.clone(),
            endpoint: endpoint.authority.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    /// Every endpoint refused: the last one's address and cause.
    fn unreachable(&self, last_failure: Option<(String, String)>) -> UpstreamError {
        let (endpoint, cause) = last_failure.unwrap_or_else(|| ("-".into(), "no endpoints".into()));
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            endpoint,
            cause,
        }
    }

    /// Whether the lean HTTP/1.1 transport may take this cluster's requests: plain HTTP/1.1
    /// towards the leaves, no body encoding.
    pub fn lean(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1 && self.compression == Compression::None
    }

    /// Sends `request` to an HTTP/1.1 cluster on a pooled or new connection and reads the
    /// response head into `buf` (the body follows on the returned connection).
    pub async fn exchange(
        &self,
        request: &Outgoing<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<(ResponseHead, LeafConnection), UpstreamError> {
        // The request line and `Host` are the only per-endpoint bytes.
        let mut start = String::with_capacity(request.target.len() + 64);
        let mut refused = None;
        for endpoint in self.attempt_order() {
            start.clear();
            start.push_str(request.method);
            start.push(' ');
            start.push_str(request.target);
            start.push_str(" HTTP/1.1\r\n");
            if !request.host_kept {
                start.push_str("host: ");
                start.push_str(endpoint.authority.as_str());
                start.push_str("\r\n");
            }
            let message = [start.as_bytes(), request.lines, request.body];
            let work = async {
                let (head, stream) = self
                    .exchange_with(endpoint, &message, request.bodiless_answer, buf)
                    .await?;
                let status = head.status;
                let connection = LeafConnection {
                    stream,
                    pool: endpoint.pool.clone(),
                };
                Ok(((head, connection), status))
            };
            match self.attempt(endpoint, self.request_timeout, work).await {
                Step::Done(result) => return result,
                Step::Next(failure) => refused = Some(failure),
            }
        }
        Err(self.unreachable(refused))
    }

    /// One endpoint: a pooled connection known to be clean, else a new one. The request is
    /// sent a second time (on a new connection) only when the pooled connection refused its
    /// very first write: then no byte of it reached the leaf. Anything that fails after a byte
    /// was written is the client's 502: the leaf may have processed the request, and replaying
    /// it could repeat whatever made the leaf fail.
    async fn exchange_with(
        &self,
        endpoint: &Endpoint,
        message: &[&[u8]; 3],
        bodiless_answer: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(ResponseHead, TcpStream), Attempt> {
        let mut pooled = endpoint.pool.checkout();
        loop {
            let reused = pooled.is_some();
            let mut stream = match pooled.take() {
                Some(stream) => stream,
                None => self.connect(endpoint).await?,
            };
            buf.clear();
            let mut slices = message.map(IoSlice::new);
            let sent = match h1::write_all_vectored(&mut stream, &mut slices).await {
                Ok(()) => Ok(()),
                Err(h1::WriteError {
                    error,
                    nothing_written: true,
                }) if reused => {
                    tracing::debug!(endpoint = %endpoint.authority, %error, "pooled connection refused the request; sending it on a new one");
                    continue;
                }
                Err(h1::WriteError { error, .. }) => Err(error),
            };
            let result = match sent {
                Ok(()) => h1::read_response_head(&mut stream, buf, bodiless_answer).await,
                Err(error) => Err(BadResponse::Io {
                    error,
                    answered: false,
                }),
            };
            return match result {
                Ok(head) => Ok((head, stream)),
                Err(e) => Err(Attempt::Failed(e.to_string())),
            };
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, Attempt> {
        let address = endpoint.authority.as_str();
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(Attempt::Connect(e.to_string())),
            Err(_) => Err(Attempt::Connect(format!(
                "no connection within {} ms",
                self.connect_timeout.as_millis()
            ))),
        }
    }

    /// `GET path` on an endpoint of the cluster (the attempt rules of every request), for the
    /// sidecar's own metadata requests: the status and the body, read whole up to `limit`.
    /// On an h2c cluster a KServe metadata path is asked as the `ModelMetadata` RPC first (h2c
    /// leaves are usually gRPC ports) and its answer given as the REST document would be;
    /// REST follows when the endpoint does not answer as a gRPC server.
    pub async fn get(&self, path: &str, limit: usize) -> Result<(u16, Vec<u8>), UpstreamError> {
        const LINES: &[u8] = b"accept: application/json\r\n\r\n";
        if self.h2c.is_some() {
            let kserve = crate::classify::classify(path)
                .filter(|t| t.protocol == crate::classify::Protocol::KServeV2 && t.verb.is_none());
            if let Some(target) = kserve {
                let version = match &target.version {
                    crate::classify::VersionSpec::Version(v) => v.as_ref(),
                    _ => "",
                };
                if let Some(answer) = self.grpc_metadata(&target.model, version, limit).await {
                    return answer;
                }
            }
            let target = PathAndQuery::try_from(path)
                .map_err(|e| self.malformed("-", format!("bad metadata path {path}: {e}")))?;
            let method = http::Method::GET;
            let empty = || {
                http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                    http_body_util::Empty::<Bytes>::new(),
                    |never: std::convert::Infallible| -> h1::BoxError { match never {} },
                ))
            };
            let sent = self.send_h2c(&method, Some(&target), LINES, &empty, None);
            let response = match sent.await {
                Some(result) => result?,
                None => return Err(self.malformed("-", "no h2c client".into())),
            };
            let status = response.status().as_u16();
            let limited = http_body_util::Limited::new(response.into_body(), limit);
            let body = http_body_util::BodyExt::collect(limited)
                .await
                .map_err(|e| self.malformed("-", format!("metadata body: {e}")))?;
            return Ok((status, body.to_bytes().to_vec()));
        }
        let request = Outgoing {
            method: "GET",
            target: path,
            host_kept: false,
            lines: LINES,
            body: &[],
            bodiless_answer: false,
        };
        let mut buf = Vec::new();
        let (head, mut connection) = self.exchange(&request, &mut buf).await?;
        let read = h1::read_body(&head, &mut buf, &mut connection.stream, limit);
        match tokio::time::timeout(self.request_timeout, read).await {
            Ok(Ok((body, clean))) => {
                if clean && head.reusable {
                    connection.release();
                }
                Ok((head.status, body))
            }
            Ok(Err(e)) => Err(self.malformed("-", format!("metadata body: {e}"))),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                endpoint: "-".into(),
                timeout_ms: self.request_timeout.as_millis() as u64,
            }),
        }
    }

    /// KServe's `ModelMetadata` RPC, its answer as the REST document (`versions`, `inputs[]`
    /// with their names); a gRPC `NOT_FOUND` as 404. `None` when the endpoint did not answer
    /// as a gRPC server.
    async fn grpc_metadata(
        &self,
        model: &str,
        version: &str,
        limit: usize,
    ) -> Option<Result<(u16, Vec<u8>), UpstreamError>> {
        use http_body_util::BodyExt as _;
        const LINES: &[u8] = b"content-type: application/grpc\r\nte: trailers\r\n\r\n";
        let message = crate::trim::grpc::metadata_request(model, version);
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let framed = Bytes::from(framed);
        let body = || {
            http_body_util::Full::new(framed.clone())
                .map_err(|never: std::convert::Infallible| -> h1::BoxError { match never {} })
                .boxed()
        };
        let method = PathAndQuery::from_static("/inference.GRPCInferenceService/ModelMetadata");
        let sent = self.send_h2c(&http::Method::POST, Some(&method), LINES, &body, None);
        let response = match sent.await? {
            Ok(response) => response,
            Err(e) => return Some(Err(e)),
        };
        let grpc = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return None;
        }
        let head_status = response.headers().get("grpc-status").cloned();
        let limited = http_body_util::Limited::new(response.into_body(), limit);
        let collected = match limited.collect().await {
            Ok(collected) => collected,
            Err(e) => return Some(Err(self.malformed("-", format!("ModelMetadata: {e}")))),
        };
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(head_status);
        let body = collected.to_bytes();
        Some(Ok(match status.as_ref().map(|s| s.as_bytes()) {
            Some(b"0") => match body.get(5..).map(crate::trim::grpc::metadata_inputs) {
                Some(Ok((versions, inputs))) => {
                    let inputs: Vec<_> = inputs
                        .iter()
                        .map(|name| serde_json::json!({ "name": name }))
                        .collect();
                    let doc = serde_json::json!({ "versions": versions, "inputs": inputs });
                    (200, doc.to_string().into_bytes())
                }
                _ => (200, b"not a ModelMetadataResponse".to_vec()),
            },
            Some(b"5") => (404, Vec::new()),
            other => {
                let code = other.map(|s| String::from_utf8_lossy(s).into_owned());
                (
                    502,
                    format!("ModelMetadata: grpc-status {code:?}").into_bytes(),
                )
            }
        }))
    }

    fn status(&self) -> ClusterStatus {
        let now = self.now_ms();
        ClusterStatus {
            name: self.name.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.authority.to_string(),
                    outstanding: e.outstanding.load(Ordering::Relaxed),
                    ejected: e.ejected_until_ms.load(Ordering::Relaxed) > now,
                })
                .collect(),
        }
    }
}

/// Whether an idle connection has nothing to read and is not at end of stream, checked
/// without blocking (the socket is non-blocking: an empty peek is `WouldBlock`).
fn idle_and_open(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(stream).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

impl Pool {
    /// The most recently used idle connection that is not too old and is clean: nothing to
    /// read and not closed by the leaf. Bytes waiting on an idle connection are a stray answer
    /// (a late second response, bytes past a short `Content-Length`, a `408` before closing):
    /// sent on to the next client they would answer the wrong request, so the connection goes.
    fn checkout(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < POOL_IDLE && idle_and_open(&stream) {
                return Some(stream);
            }
        }
        None
    }
}

/// What the attempt loop does after one attempt.
enum Step<T> {
    /// The answer, or the error the client gets.
    Done(Result<T, UpstreamError>),
    /// The connection was refused (endpoint, cause): try the next endpoint.
    Next((String, String)),
}

/// How one attempt failed.
enum Attempt {
    /// No connection could be opened (the next endpoint is tried).
    Connect(String),
    /// The connection failed after the request was sent, or the response was malformed.
    Failed(String),
}

/// An error and its causes on one line (hyper's top-level messages alone are vague).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("homefeed_*", "homefeed_ranker"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*rank*er", "xrankyyer"));
        assert!(!glob_match("ads_*", "homefeed"));
    }
}
