//! Unpadded standard base64, as Matrix uses it for keys and signatures.
//! Output is always unpadded; input may be padded or not, and non-zero
//! trailing bits are accepted (the spec's own test seed has them, and
//! Python's decoder, which Synapse uses, allows them).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a base64 string does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Base64Error {
    /// Not valid standard base64.
    #[error("not valid base64: {reason}")]
    Invalid {
        /// The decoder's reason.
        reason: String,
    },
    /// Valid base64, wrong number of bytes.
    #[error("decodes to {got} bytes, expected {expected}")]
    Length {
        /// Bytes decoded.
        got: usize,
        /// Bytes required.
        expected: usize,
    },
}

/// Encode without padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENGINE.encode(bytes)
}

/// Decode, accepting padded and unpadded input.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    ENGINE.decode(text).map_err(|e| Base64Error::Invalid {
        reason: e.to_string(),
    })
}

/// Decode into exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], Base64Error> {
    let v = decode(text)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| Base64Error::Length {
        got: v.len(),
        expected: N,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpadded_out_padded_or_not_in() {
        assert_eq!(encode(b"a"), "YQ");
        assert_eq!(decode("YQ").unwrap(), b"a");
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert!(decode("Y").is_err());
        assert!(decode("YQ=").is_err() || decode("YQ=").unwrap() == b"a");
        assert!(
            decode("Y-_Q").is_err(),
            "url-safe alphabet is not standard base64"
        );
        assert_eq!(
            decode_array::<2>("YQ"),
            Err(Base64Error::Length {
                got: 1,
                expected: 2
            })
        );
    }
}
