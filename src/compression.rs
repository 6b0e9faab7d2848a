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

/// Decodes an lz4 frame, refusing to produce more than `limit` bytes.
pub fn decode(body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(3).min(limit as usize));
    let decoder = lz4_flex::frame::FrameDecoder::new(body);
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
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
