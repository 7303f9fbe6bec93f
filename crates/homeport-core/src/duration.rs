//! Durations as admins write them: `500ms`, `10s`, `2m`, `24h`, `7d`, `1w`,
//! `1y` — and, in configuration files, Synapse's rule that a bare integer
//! is milliseconds.

use std::time::Duration;

/// Why a duration does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration")]
    Empty,
    /// No number before the unit.
    #[error("duration {0:?} does not start with a number")]
    NoNumber(String),
    /// A unit homeport does not know.
    #[error("duration {text:?} has unknown unit {unit:?} (use ms, s, m, h, d, w or y)")]
    UnknownUnit {
        /// The input.
        text: String,
        /// The unit.
        unit: String,
    },
    /// A number without a unit where one is required.
    #[error("duration {0:?} needs a unit (e.g. 500ms, 10s, 2m)")]
    NoUnit(String),
    /// Too large.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "y" => 365 * 86_400_000,
        _ => return None,
    })
}

fn split(text: &str) -> Result<(u64, &str), DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| DurationError::Overflow(text.to_owned()))?;
    Ok((n, t[digits..].trim()))
}

/// Parse a duration that must carry a unit (command-line options).
pub fn parse_with_unit(text: &str) -> Result<Duration, DurationError> {
    let (n, unit) = split(text)?;
    if unit.is_empty() {
        return Err(DurationError::NoUnit(text.to_owned()));
    }
    let ms = unit_ms(unit).ok_or_else(|| DurationError::UnknownUnit {
        text: text.to_owned(),
        unit: unit.to_owned(),
    })?;
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(text.to_owned()))
}

/// Parse a duration as Synapse reads its config: a bare number is
/// milliseconds, otherwise a number with a unit.
pub fn parse_synapse(text: &str) -> Result<Duration, DurationError> {
    let (n, unit) = split(text)?;
    if unit.is_empty() {
        return Ok(Duration::from_millis(n));
    }
    parse_with_unit(text)
}

/// Format a duration compactly (`1h30m`, `500ms`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86_400u128), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_with_unit("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_with_unit("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_with_unit("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_with_unit("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_with_unit("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_with_unit("1y"), Ok(Duration::from_secs(31_536_000)));
        assert_eq!(parse_with_unit(" 3d "), Ok(Duration::from_secs(259_200)));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_with_unit("10"),
            Err(DurationError::NoUnit("10".into()))
        );
        assert_eq!(parse_with_unit(""), Err(DurationError::Empty));
        assert_eq!(
            parse_with_unit("s"),
            Err(DurationError::NoNumber("s".into()))
        );
        assert!(matches!(
            parse_with_unit("10 parsecs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_with_unit("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_with_unit("18446744073709551615y"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn synapse_bare_numbers_are_milliseconds() {
        assert_eq!(parse_synapse("86400000"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_synapse("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
