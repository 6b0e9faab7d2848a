//! The lean HTTP/1.1 path for the requests that make up the traffic: a `POST` with a
//! `Content-Length` from an HTTP/1.1 client, towards an HTTP/1.1 cluster without compression.
//! Heads are parsed in place (`httparse`), the body is read once into a buffer of its declared
//! size, the request goes out in one `writev` on a pooled connection and the answer is relayed
//! as it arrives. hyper's general machinery (header maps, body channels, the pooled client's
//! tasks) cost about twice HAProxy's CPU per small request; this path does the same work with a
//! few buffers per request.
//!
//! Anything else (h2c, chunked or encoded bodies, `Expect`, upgrades, `Connection: close`,
//! other methods, heads that do not parse or are too large) ends the lean path for its
//! connection: the socket and the bytes already read go to hyper ([`Rewind`]), which serves
//! the rest of the connection as before and answers errors as before.

use std::future::Future as _;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::classify::classify;
use crate::proxy::{
    is_hop_by_hop, trim_request, SyntheticError, TrimHeaders, INFERENCE_HEADER_LENGTH,
};
use crate::state::Shared;
use crate::upstream::Cluster;

/// Heads larger than this go to hyper (which refuses them with 431).
const MAX_HEAD: usize = 64 * 1024;
/// Headers per head; more go to hyper.
const MAX_HEADERS: usize = 100;
/// Largest body buffer allocated before its bytes arrive.
const MAX_UPFRONT: usize = 16 * 1024 * 1024;
/// Bytes asked for per read.
const READ_SIZE: usize = 16 * 1024;

/// Serves requests on `stream` until the client closes it, an answer cannot be completed, or
/// shutdown begins (`None`), or until a request needs hyper: then the socket comes back with
/// the bytes already read, unconsumed.
pub async fn serve(
    shared: &Shared,
    mut stream: ClientStream,
    stop: &mut watch::Receiver<bool>,
) -> Option<Rewind> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // The leaf's answers pass through here, one request after the other.
    let mut answer: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let header_timeout = crate::config::ms(shared.config.header_read_timeout_ms);
    loop {
        // The head, within the timeout counted from when the connection is ready for it (as
        // hyper counts it: an idle keep-alive connection is closed when it runs out).
        let deadline = tokio::time::Instant::now() + header_timeout;
        if buf.is_empty() {
            tokio::select! {
                read = tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf)) => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                },
                _ = stop.changed() => return None,
            }
        }
        let request = loop {
            let reason = match parse_request(shared, &buf) {
                Parsed::Lean(request) => break request,
                Parsed::Hyper(reason) => reason,
                Parsed::Partial if buf.len() > MAX_HEAD => "head",
                Parsed::Partial => {
                    match tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => continue,
                        // Closed, failed or too slow: hyper would close without an answer too.
                        _ => return None,
                    }
                }
            };
            tracing::debug!(reason, "connection handed to hyper");
            shared
                .metrics
                .hyper_handoffs
                .with_label_values(&[reason])
                .inc();
            return Some(Rewind::new(buf, stream));
        };
        // The body, exactly as declared; the bytes after it are the next request's. (Room for
        // a large declared length is made as the bytes arrive, not on the client's word.)
        let mut body = Vec::with_capacity(request.content_length.min(MAX_UPFRONT));
        let have = (buf.len() - request.head_len).min(request.content_length);
        body.extend_from_slice(&buf[request.head_len..request.head_len + have]);
        buf.drain(..request.head_len + have);
        let body_deadline =
            tokio::time::Instant::now() + crate::config::ms(shared.config.body_read_timeout_ms);
        while body.len() < request.content_length {
            let missing = (request.content_length - body.len()) as u64;
            let mut rest = (&mut stream).take(missing);
            let read = rest.read_buf(&mut body);
            let failure = match tokio::time::timeout_at(body_deadline, read).await {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(Ok(_)) => SyntheticError::body_read(
                    "the client closed the connection before the end of the body",
                ),
                Ok(Err(e)) => SyntheticError::body_read(&e.to_string()),
                Err(_) => SyntheticError::body_timeout(shared.config.body_read_timeout_ms),
            };
            shared.metrics.rejected(failure.kind).inc();
            let _ = stream.write_all(&failure.to_http1()).await;
            return None;
        }
        if !forward(shared, &mut stream, request, body, &mut answer).await {
            return None;
        }
        if *stop.borrow() {
            return None;
        }
    }
}

/// A request the lean path takes, with what forwarding it needs of its head.
struct LeanRequest<'s> {
    head_len: usize,
    content_length: usize,
    /// Request target as sent (origin form, query included).
    target: String,
    /// Length of the path in `target` (before any `?`).
    path_len: usize,
    /// Header lines to forward, each ending in CRLF, without `Host` (unless the cluster keeps
    /// it), `Content-Length`, `Inference-Header-Content-Length` and hop-by-hop headers.
    lines: Vec<u8>,
    /// `Inference-Header-Content-Length` as sent.
    binary_json_len: Option<Vec<u8>>,
    /// Whether `lines` holds the client's `Host` (the cluster keeps it and there was one).
    host_kept: bool,
    cluster: &'s Cluster,
}

enum Parsed<'s> {
    Lean(LeanRequest<'s>),
    Partial,
    /// For hyper, with the reason (the `reason` label of `trimmer_hyper_handoffs_total`).
    Hyper(&'static str),
}

/// Parses the head at the start of `buf` and decides whether the lean path takes it.
fn parse_request<'s>(shared: &'s Shared, buf: &[u8]) -> Parsed<'s> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper("head"),
    };
    let (Some(method), Some(version), Some(target)) =
        (request.method, request.version, request.path)
    else {
        return Parsed::Hyper("head");
    };
    if method != "POST" {
        return Parsed::Hyper("not_post");
    }
    if version != 1 {
        return Parsed::Hyper("not_http11");
    }
    // hyper refuses (400) or rewrites (drops a `#fragment`) some targets that httparse
    // accepts: those go to hyper, so both paths answer them alike.
    if !target.starts_with('/')
        || target.contains('#')
        || http::uri::PathAndQuery::try_from(target).is_err()
    {
        return Parsed::Hyper("target");
    }
    let path = &target[..target.find('?').unwrap_or(target.len())];
    let cluster = shared
        .upstreams
        .route(classify(path).as_ref().map(|t| t.model.as_ref()));
    if !cluster.lean() {
        return Parsed::Hyper("cluster");
    }
    let mut content_length = None;
    let mut binary_json_len = None;
    let mut host_kept = false;
    let mut lines = Vec::with_capacity(head_len);
    for header in request.headers.iter() {
        let name = header.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            let value = std::str::from_utf8(header.value).ok().and_then(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<usize>().ok())
                    .flatten()
            });
            match (content_length, value) {
                (None, Some(v)) => content_length = Some(v),
                _ => return Parsed::Hyper("framing"),
            }
        } else if is("connection") {
            let keep_alive = header
                .value
                .split(|&b| b == b',')
                .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
            if !keep_alive {
                return Parsed::Hyper("framing");
            }
        } else if is("content-encoding") {
            return Parsed::Hyper("encoding");
        } else if is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || is("te")
            || is("trailer")
        {
            return Parsed::Hyper("framing");
        } else if is_hop_by_hop(name) || (is("host") && !cluster.preserve_host) {
            // Hop-by-hop (those not sent to hyper above), or replaced by the endpoint's
            // authority.
        } else if is(INFERENCE_HEADER_LENGTH.as_str()) {
            binary_json_len = Some(header.value.to_vec());
        } else {
            host_kept |= is("host");
            push_header(&mut lines, name.as_bytes(), header.value);
        }
    }
    match content_length {
        None => Parsed::Hyper("framing"),
        Some(len) if len as u64 > shared.config.max_body_bytes => Parsed::Hyper("too_large"),
        Some(len) => Parsed::Lean(LeanRequest {
            head_len,
            content_length: len,
            target: target.to_string(),
            path_len: path.len(),
            lines,
            binary_json_len,
            host_kept,
            cluster,
        }),
    }
}

/// Trims, forwards and relays the answer; `false` when the connection must close.
async fn forward(
    shared: &Shared,
    stream: &mut ClientStream,
    mut request: LeanRequest<'_>,
    mut body: Vec<u8>,
    answer: &mut Vec<u8>,
) -> bool {
    let path = &request.target[..request.path_len];
    let mut json_len = None;
    if let Some(target) = classify(path).filter(|t| t.verb.is_some()) {
        let headers = TrimHeaders {
            encoded: false,
            binary_json_len: request.binary_json_len.as_deref(),
        };
        let trimmed = trim_request(shared, &target, headers, &body);
        if let Some(trimmed) = trimmed.body {
            body = trimmed;
        }
        json_len = trimmed.json_len;
    }
    match (json_len, &request.binary_json_len) {
        (Some(len), _) => {
            let _ = write!(request.lines, "{INFERENCE_HEADER_LENGTH}: {len}\r\n");
        }
        (None, Some(value)) => push_header(
            &mut request.lines,
            INFERENCE_HEADER_LENGTH.as_str().as_bytes(),
            value,
        ),
        (None, None) => {}
    }
    let _ = write!(request.lines, "content-length: {}\r\n\r\n", body.len());
    let cluster = request.cluster;
    let (head, mut leaf) = match cluster
        .exchange(
            &request.target,
            request.host_kept,
            &request.lines,
            &body,
            answer,
        )
        .await
    {
        Ok(exchange) => exchange,
        Err(e) => {
            tracing::warn!(error = %e, path, "upstream request failed");
            let answer = SyntheticError::upstream(&e).to_http1();
            return stream.write_all(&answer).await.is_ok();
        }
    };
    drop(body);
    match relay(&head, answer, &mut leaf.stream, stream).await {
        Ok(clean) => {
            if clean && head.reusable {
                cluster.release(leaf);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, path, "relaying the upstream response failed");
            false
        }
    }
}

/// Appends `name: value\r\n`.
fn push_header(lines: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    lines.extend_from_slice(name);
    lines.extend_from_slice(b": ");
    lines.extend_from_slice(value);
    lines.extend_from_slice(b"\r\n");
}

/// Reads what is there (up to `READ_SIZE` more bytes) onto the end of `buf`.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_SIZE);
    stream.read_buf(buf).await
}

/// A failed write, and whether it failed before any byte went out.
#[derive(Debug)]
pub struct WriteError {
    /// What the socket reported.
    pub error: io::Error,
    /// No byte of the message was written: the peer cannot have seen any of it.
    pub nothing_written: bool,
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        e.error
    }
}

/// Writes all of `slices` (vectored writes until done).
pub async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut slices: &mut [IoSlice<'_>],
) -> Result<(), WriteError> {
    let mut written = false;
    while !slices.is_empty() {
        let n = match stream.write_vectored(slices).await {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        }
        .map_err(|error| WriteError {
            error,
            nothing_written: !written,
        })?;
        written = true;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// How the leaf's response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, relayed as it is.
    Chunked,
    /// Until the leaf closes; relayed to the client as chunks.
    Close,
}

/// A leaf's response head, parsed, with the head to send the client.
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Bytes of the head in the read buffer.
    head_len: usize,
    framing: Framing,
    /// Whether the connection can go back to the pool once the body is read.
    pub reusable: bool,
    /// The head for the client: status line and end-to-end headers.
    client_head: Vec<u8>,
}

/// Why a leaf's response head is not usable.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    /// The leaf closed the connection before a complete head.
    #[error("connection closed before a complete response head")]
    Closed {
        /// Whether any byte of an answer (an interim one included) had arrived.
        answered: bool,
    },
    /// The bytes are not an HTTP/1.x response head.
    #[error("malformed response head: {0}")]
    Malformed(String),
    /// Writing the request or reading the answer failed.
    #[error("{error}")]
    Io {
        /// What the socket reported.
        error: io::Error,
        /// Whether any byte of an answer had arrived.
        answered: bool,
    },
}

/// Reads from the leaf until `buf` holds a complete final (non-1xx) response head; 1xx
/// interim responses are dropped, as hyper's client does.
pub async fn read_response_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<ResponseHead, BadResponse> {
    let mut answered = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_response(buf)? {
                Some(head) if (100..200).contains(&head.status) => {
                    buf.drain(..head.head_len);
                    continue;
                }
                Some(head) => return Ok(head),
                None if buf.len() > MAX_HEAD => {
                    return Err(BadResponse::Malformed("head too large".into()))
                }
                None => {}
            }
        }
        match read_more(stream, buf).await {
            Ok(0) => return Err(BadResponse::Closed { answered }),
            Ok(_) => answered = true,
            Err(error) => return Err(BadResponse::Io { error, answered }),
        }
    }
}

fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(BadResponse::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut keep_alive = response.version == Some(1);
    let mut chunked = false;
    // The transfer codings, all `Transfer-Encoding` lines joined.
    let mut codings: Vec<u8> = Vec::new();
    let mut length: Option<u64> = None;
    // Headers the `Connection` header names are hop-by-hop too.
    let mut named: Vec<&[u8]> = Vec::new();
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                }
                named.push(token);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !codings.is_empty() {
                codings.extend_from_slice(b", ");
            }
            codings.extend_from_slice(header.value);
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (length, value) {
                (_, None) => return Err(BadResponse::Malformed("invalid content-length".into())),
                (Some(a), Some(b)) if a != b => {
                    return Err(BadResponse::Malformed("conflicting content-length".into()))
                }
                (_, v) => length = v,
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if !codings.is_empty() {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(len) = length {
        Framing::Length(len)
    } else {
        Framing::Close
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    let mut client_head = Vec::with_capacity(head_len + 32);
    let _ = write!(client_head, "HTTP/1.1 {status} ");
    client_head.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    client_head.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name;
        // `Content-Length` is framing, never hop-by-hop, whatever `Connection` names: it goes
        // on exactly when it frames the body (not for 204/304, whose client waits for none).
        let hop = if name.eq_ignore_ascii_case("content-length") {
            !matches!(framing, Framing::Length(_))
        } else {
            is_hop_by_hop(name)
                || named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        };
        if !hop {
            push_header(&mut client_head, name.as_bytes(), header.value);
        }
    }
    // The leaf's transfer codings go on (the client must undo them); a body delimited by the
    // leaf closing is sent on as chunks.
    match framing {
        Framing::Chunked => push_header(&mut client_head, b"transfer-encoding", &codings),
        Framing::Close if !codings.is_empty() => {
            codings.extend_from_slice(b", chunked");
            push_header(&mut client_head, b"transfer-encoding", &codings);
        }
        Framing::Close => client_head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Length(_) => {}
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        reusable: keep_alive,
        client_head,
    }))
}

/// Sends the client the head and the body as it arrives from the leaf. `buf` holds the head
/// and whatever body bytes came with it. `Ok(false)` when the leaf sent bytes past the end of
/// its response (its connection must not be used again); an error leaves both connections
/// unusable.
async fn relay(
    head: &ResponseHead,
    buf: &mut Vec<u8>,
    leaf: &mut TcpStream,
    client: &mut ClientStream,
) -> io::Result<bool> {
    buf.drain(..head.head_len);
    match head.framing {
        Framing::Empty => {
            client.write_all(&head.client_head).await?;
            Ok(buf.is_empty())
        }
        Framing::Length(len) => {
            let mut left = len;
            let first = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let clean = buf.len() == first;
            left -= first as u64;
            let mut slices = [IoSlice::new(&head.client_head), IoSlice::new(&buf[..first])];
            write_all_vectored(client, &mut slices).await?;
            while left > 0 {
                buf.clear();
                let n = leaf.take(left).read_buf(buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the leaf closed the connection before the end of the body",
                    ));
                }
                left -= n as u64;
                client.write_all(buf).await?;
            }
            Ok(clean)
        }
        Framing::Chunked => {
            let mut chunks = ChunkedEnd::default();
            let mut pending: &[u8] = &head.client_head;
            loop {
                let end = chunks.feed(buf);
                let body = &buf[..end.unwrap_or(buf.len())];
                write_all_vectored(client, &mut [IoSlice::new(pending), IoSlice::new(body)])
                    .await?;
                pending = &[];
                if let Some(end) = end {
                    return Ok(end == buf.len());
                }
                buf.clear();
                if read_more(leaf, buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the leaf closed the connection inside a chunked body",
                    ));
                }
            }
        }
        Framing::Close => {
            client.write_all(&head.client_head).await?;
            loop {
                if !buf.is_empty() {
                    let size = format!("{:x}\r\n", buf.len());
                    write_all_vectored(
                        client,
                        &mut [
                            IoSlice::new(size.as_bytes()),
                            IoSlice::new(buf),
                            IoSlice::new(b"\r\n"),
                        ],
                    )
                    .await?;
                }
                buf.clear();
                if read_more(leaf, buf).await? == 0 {
                    client.write_all(b"0\r\n\r\n").await?;
                    return Ok(false);
                }
            }
        }
    }
}

/// Finds where a chunked body ends, fed the bytes as they arrive (chunk extensions and
/// trailers are passed over, not interpreted).
#[derive(Debug, Default)]
struct ChunkedEnd {
    state: Chunk,
    /// Size of the chunk being read (hex digits so far, then bytes left).
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Chunk extension, up to the line's end.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// Malformed: never ends (the relay fails when the leaf closes).
    Broken,
}

impl ChunkedEnd {
    /// Consumes `bytes`; the offset just past the body's end, if it is in them.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Chunk::Size => match (b as char).to_digit(16) {
                    Some(d) if self.size >> 60 == 0 => {
                        self.size = self.size * 16 + u64::from(d);
                        Chunk::Size
                    }
                    None if b == b';' || b == b' ' || b == b'\t' => Chunk::Extension,
                    None if b == b'\r' => Chunk::SizeLf,
                    _ => Chunk::Broken,
                },
                Chunk::Extension if b == b'\r' => Chunk::SizeLf,
                Chunk::Extension => Chunk::Extension,
                Chunk::SizeLf if b == b'\n' && self.size == 0 => Chunk::TrailerStart,
                Chunk::SizeLf if b == b'\n' => Chunk::Data,
                Chunk::Data => {
                    let take =
                        (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size,
                Chunk::TrailerStart if b == b'\r' => Chunk::EndLf,
                Chunk::TrailerStart | Chunk::Trailer if b != b'\r' => Chunk::Trailer,
                Chunk::Trailer => Chunk::TrailerLf,
                Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
                Chunk::EndLf if b == b'\n' => return Some(i + 1),
                _ => Chunk::Broken,
            };
            i += 1;
        }
        None
    }
}

/// A client's connection. A write that cannot make progress for `limit` (the client stopped
/// reading) fails with `TimedOut`, which ends the connection on either path; hyper has no
/// write timeout of its own.
pub struct ClientStream {
    inner: TcpStream,
    /// `client_write_timeout_ms`.
    limit: std::time::Duration,
    /// Armed while a write waits for the client; cleared by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ClientStream {
    /// Wraps an accepted connection.
    pub fn new(inner: TcpStream, limit: std::time::Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write returned `poll`: clears the timer on progress, fails once it runs out.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} ms (client_write_timeout_ms)",
                    limit.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.deadline(cx, poll)
    }
}

/// A socket whose first reads return bytes that were already read from it.
pub struct Rewind {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read again.
    read: usize,
    inner: ClientStream,
}

impl Rewind {
    /// A socket nothing was read from yet.
    pub fn untouched(inner: ClientStream) -> Self {
        Self::new(Vec::new(), inner)
    }

    fn new(prefix: Vec<u8>, inner: ClientStream) -> Self {
        Rewind {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let n = out.remaining().min(this.prefix.len() - this.read);
            out.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8], pieces: usize) -> Option<usize> {
        let mut chunks = ChunkedEnd::default();
        let step = body.len().div_ceil(pieces).max(1);
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(end) = chunks.feed(piece) {
                return Some(offset + end);
            }
            offset += piece.len();
        }
        None
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let cases: [&[u8]; 4] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            b"2\r\n\r\n\r\n0\r\nx-trailer: 1\r\nx-other: 2\r\n\r\n",
            b"0\r\n\r\n",
        ];
        for body in cases {
            let mut with_next = body.to_vec();
            with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            for pieces in [1, 2, 3, 7, body.len()] {
                assert_eq!(
                    end_of(&with_next, pieces),
                    Some(body.len()),
                    "{} in {pieces} pieces",
                    String::from_utf8_lossy(body)
                );
            }
        }
        for broken in [&b"5\r\nhelloXX0\r\n\r\n"[..], b"zz\r\n", b"5\r\nhel"] {
            assert_eq!(end_of(broken, 1), None);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Valid chunked bodies (any chunk sizes, extensions, trailers) fed in arbitrary
        /// pieces end exactly where they end, whatever follows them.
        #[test]
        fn chunked_ends_are_found_in_any_split(
            chunks in proptest::collection::vec((0usize..300, proptest::bool::ANY, proptest::bool::ANY), 0..8),
            trailers in proptest::collection::vec("[a-z-]{1,10}: [ -~]{0,20}", 0..3),
            cuts in proptest::collection::vec(0usize..4000, 0..6),
            after in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
        ) {
            let mut body = Vec::new();
            for (i, &(size, ext, upper)) in chunks.iter().enumerate() {
                let size = size.max(1);
                let hex = if upper { format!("{size:X}") } else { format!("{size:x}") };
                body.extend_from_slice(hex.as_bytes());
                if ext {
                    body.extend_from_slice(b";name=\"v\"");
                }
                body.extend_from_slice(b"\r\n");
                body.extend((0..size).map(|j| b"\r\n0;x"[(i + j) % 5]));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for t in &trailers {
                body.extend_from_slice(t.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let mut stream = body.clone();
            stream.extend_from_slice(&after);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut chunked = ChunkedEnd::default();
            let (mut from, mut found) = (0, None);
            for cut in cuts {
                if let Some(end) = chunked.feed(&stream[from..cut]) {
                    found = Some(from + end);
                    break;
                }
                from = cut;
            }
            proptest::prop_assert_eq!(found, Some(body.len()));
        }

        /// Arbitrary bytes never panic the response parser or the chunk scanner.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_response(&bytes);
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend_from_slice(&bytes);
            let _ = parse_response(&head);
            let _ = ChunkedEnd::default().feed(&bytes);
        }
    }

    #[test]
    fn response_heads_frame_and_strip() {
        // (leaf's head, framing, connection reusable, head sent to the client)
        let cases: &[(&[u8], Framing, bool, &str)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nx-end: 2\r\n\r\nabc",
                Framing::Length(3),
                true,
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nx-end: 2\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                Framing::Chunked,
                true,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            // Other transfer codings stay for the client to undo; a close-delimited body is
            // chunked on top of them.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Framing::Close,
                false,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\n",
                Framing::Close,
                false,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            // `Connection` naming the framing header does not unframe the answer.
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 3\r\n\r\n",
                Framing::Length(3),
                true,
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            ),
            // A 204 or 304 has no body, whatever length it claims.
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Framing::Empty,
                true,
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\netag: x\r\n\r\n",
                Framing::Empty,
                true,
                "HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
            ),
            (
                b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                Framing::Empty,
                false,
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
        ];
        for &(raw, framing, reusable, client_head) in cases {
            let head = parse_response(raw).unwrap().unwrap();
            let raw = String::from_utf8_lossy(raw);
            assert_eq!(head.framing, framing, "{raw:?}");
            assert_eq!(head.reusable, reusable, "{raw:?}");
            assert_eq!(
                String::from_utf8_lossy(&head.client_head),
                client_head,
                "{raw:?}"
            );
        }
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_err());
        assert!(parse_response(b"HTTP/1.1 abc what\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-")
            .unwrap()
            .is_none());
    }
}
