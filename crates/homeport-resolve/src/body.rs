//! Reading a remote body with a cap: every remote read in homeport goes
//! through here (the `.well-known` fetch, the federation client, the
//! tester's probes).

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;

/// Why a body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// More than the cap (announced by Content-Length or streamed).
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The transfer failed.
    #[error("reading body: {0}")]
    Transfer(String),
}

/// Read `body` fully, refusing more than `max` bytes. A `Content-Length`
/// above `max` is refused before anything is read.
pub async fn read_capped(
    mut body: hyper::body::Incoming,
    headers: &http::HeaderMap,
    max: usize,
) -> Result<Bytes, BodyError> {
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(BodyError::TooLarge(max));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Transfer(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
