//! lz4 frame encoding of request bodies on the link between a trimmer next to the root and one
//! next to the leaf (`Content-Encoding: lz4`), with a size limit against decompression bombs.

use std::io::{Read, Write};

/// Why an lz4 body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The decoded body would exceed the limit.
    #[error("the lz4 body decodes to more than {0} bytes")]
    TooLarge(u64),
    /// Not a valid lz4 frame (truncated, corrupt, or claiming bytes that are not there).
    #[error("the lz4 body is not a valid frame: {0}")]
    Corrupt(String),
}

/// Encodes `body` as one lz4 frame.
pub fn encode(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(body.len() / 2 + 64));
    encoder.write_all(body)?;
    encoder.finish().map_err(std::io::Error::other)
}

/// Decodes an lz4 frame, refusing to produce more than `limit` bytes. The output grows by
/// doubling but never past `limit`, so a bomb costs at most `limit` bytes of output buffer
/// before it is refused. CPU-bound: callers on an async runtime run it on the blocking pool.
pub fn decode(body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(body.len().saturating_mul(3).min(limit_bytes));
    let mut decoder = lz4_flex::frame::FrameDecoder::new(body);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if n == 0 {
            return Ok(out);
        }
        if n > limit_bytes - out.len() {
            return Err(DecodeError::TooLarge(limit));
        }
        if out.capacity() - out.len() < n {
            let grow = out.capacity().max(n).min(limit_bytes - out.len());
            out.reserve_exact(grow);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_limit_and_corruption() {
        let body = br#"{"instances":[{"a":1,"b":2}]}"#.repeat(100);
        let encoded = encode(&body).unwrap();
        assert!(encoded.len() < body.len() / 4);
        assert_eq!(decode(&encoded, body.len() as u64).unwrap(), body);
        assert!(matches!(
            decode(&encoded, body.len() as u64 - 1),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(
            decode(&encoded[..encoded.len() / 2], 1 << 20),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode(b"not lz4 at all", 1 << 20),
            Err(DecodeError::Corrupt(_))
        ));
        // A bomb: a megabyte of zeros compresses to a few kilobytes and is refused at the limit.
        let bomb = encode(&vec![0u8; 1 << 20]).unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            decode(&bomb, 64 * 1024),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
