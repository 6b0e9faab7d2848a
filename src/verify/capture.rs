//! Keeping a bounded copy of an answer while it is relayed, so the client's answer is never
//! held back for verification: [`Tee`] copies what a writer accepted (the lean path, and
//! shadow answers read into nothing), [`TeeBody`] copies a hyper body's frames as the client
//! reads them. Only sampled requests are teed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::compare::Answer;
use crate::headers::INFERENCE_HEADER_LENGTH;

/// Largest answer kept for a comparison; a larger one is `skipped` (the client still gets all
/// of it).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Bytes copied up to [`MAX_ANSWER_BYTES`]; past it, only the fact that there was more.
#[derive(Debug, Default)]
pub struct Capture {
    bytes: Vec<u8>,
    overflow: bool,
}

impl Capture {
    fn push(&mut self, data: &[u8]) {
        if self.overflow || self.bytes.len() + data.len() > MAX_ANSWER_BYTES {
            self.overflow = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(data);
        }
    }

    /// What was copied, unless the answer was larger than the limit.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        (!self.overflow).then_some(self.bytes)
    }
}

/// A writer that passes everything to `inner` and keeps a copy of what `inner` accepted.
pub struct Tee<W> {
    /// Where the bytes go.
    pub inner: W,
    /// The copy.
    pub capture: Capture,
}

impl<W> Tee<W> {
    /// Tees writes to `inner`.
    pub fn new(inner: W) -> Self {
        Tee {
            inner,
            capture: Capture::default(),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tee<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.capture.push(&buf[..n]);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            let mut left = n;
            for buf in bufs {
                let take = left.min(buf.len());
                this.capture.push(&buf[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        poll
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

/// An HTTP/1.1 answer as written to a client (head, then the body as framed) as an
/// [`Answer`]; `None` when it does not parse.
pub fn parse_http1(bytes: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(bytes).ok()? else {
        return None;
    };
    let mut chunked = false;
    let mut json_len = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header
            .name
            .eq_ignore_ascii_case(INFERENCE_HEADER_LENGTH.as_str())
        {
            json_len = std::str::from_utf8(header.value).ok()?.trim().parse().ok();
        }
    }
    let rest = &bytes[head_len..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Answer {
        status: response.code?,
        json_len,
        body,
    })
}

/// The data of a chunked body (trailers dropped).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(rest.len());
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A response body that copies its data frames as the client reads them and, once it ends,
/// hands the [`Answer`] to the verification waiting for it (nothing, if it failed or was
/// dropped before its end).
pub struct TeeBody<B> {
    inner: B,
    status: u16,
    json_len: Option<usize>,
    capture: Capture,
    done: Option<oneshot::Sender<Option<Answer>>>,
}

impl<B> TeeBody<B> {
    /// Tees `inner`, the body of an answer with `status` and headers `headers`.
    pub fn new(
        inner: B,
        status: u16,
        headers: &http::HeaderMap,
        done: oneshot::Sender<Option<Answer>>,
    ) -> Self {
        let json_len = headers
            .get(&INFERENCE_HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        TeeBody {
            inner,
            status,
            json_len,
            capture: Capture::default(),
            done: Some(done),
        }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.capture.push(data);
                }
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    let answer =
                        std::mem::take(&mut this.capture)
                            .into_bytes()
                            .map(|body| Answer {
                                status: this.status,
                                json_len: this.json_len,
                                body,
                            });
                    let _ = done.send(answer);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    let _ = done.send(None);
                }
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_answers_parse_with_either_framing() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_http1(plain).unwrap().body, b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ninference-header-content-length: 3\r\n\r\n3\r\nhel\r\n2;x=1\r\nlo\r\n0\r\nt: 1\r\n\r\n";
        let answer = parse_http1(chunked).unwrap();
        assert_eq!(
            (answer.status, answer.json_len, answer.body.as_slice()),
            (200, Some(3), &b"hello"[..])
        );
        assert!(
            parse_http1(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhe").is_none()
        );
    }

    #[test]
    fn captures_stop_at_the_limit() {
        let mut capture = Capture::default();
        capture.push(&[0; 10]);
        assert_eq!(capture.into_bytes().unwrap().len(), 10);
        let mut capture = Capture::default();
        capture.push(&vec![0; MAX_ANSWER_BYTES]);
        capture.push(&[0]);
        assert!(capture.into_bytes().is_none());
    }
}
