//! How long a `.well-known` response may be cached, from its headers.
//!
//! Synapse's rules, which homeport keeps: `Cache-Control: no-store` means
//! "do not cache" (then clamped up to the minimum), `max-age` wins over
//! `Expires`, and with neither the caller applies its default.

use std::time::{Duration, SystemTime};

/// What the headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePeriod {
    /// `no-store`.
    NoStore,
    /// `max-age` or `Expires`.
    For(Duration),
    /// No usable header.
    Unspecified,
}

/// Parse `Cache-Control` directives into (name, optional value) pairs,
/// lower-casing names. Several header lines are joined by the caller with
/// `,`.
pub fn parse_cache_control(value: &str) -> Vec<(String, Option<String>)> {
    value
        .split(',')
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            match d.split_once('=') {
                Some((k, v)) => Some((
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_owned()),
                )),
                None => Some((d.to_ascii_lowercase(), None)),
            }
        })
        .collect()
}

/// The cache period from `Cache-Control` and `Expires` header values
/// (`now` is the wall-clock time the response arrived).
pub fn cache_period(cache_control: &[&str], expires: Option<&str>, now: SystemTime) -> CachePeriod {
    let joined = cache_control.join(",");
    let directives = parse_cache_control(&joined);
    if directives.iter().any(|(k, _)| k == "no-store") {
        return CachePeriod::NoStore;
    }
    if let Some((_, Some(v))) = directives.iter().find(|(k, _)| k == "max-age")
        && let Ok(secs) = v.parse::<u64>()
    {
        return CachePeriod::For(Duration::from_secs(secs));
    }
    if let Some(exp) = expires {
        return match httpdate_parse(exp.trim()) {
            // An Expires in the past (or unparsable, which RFC 9111 says
            // means "already expired") gives a zero period.
            Some(t) => CachePeriod::For(t.duration_since(now).unwrap_or(Duration::ZERO)),
            None => CachePeriod::For(Duration::ZERO),
        };
    }
    CachePeriod::Unspecified
}

/// Parse an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form
/// senders may generate. Obsolete forms are treated as unparsable.
pub fn httpdate_parse(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 29 || &s[25..] != " GMT" || &s[3..5] != ", " {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let day = num(5..7)?;
    let month = match s.get(8..11)? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_directives() {
        assert_eq!(
            parse_cache_control("max-age=3600, public, Private=\"x\""),
            vec![
                ("max-age".into(), Some("3600".into())),
                ("public".into(), None),
                ("private".into(), Some("x".into()))
            ]
        );
        assert!(parse_cache_control("").is_empty());
        assert!(parse_cache_control(" , ,").is_empty());
    }

    #[test]
    fn max_age_wins_over_expires() {
        assert_eq!(
            cache_period(
                &["max-age=60"],
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                at(0)
            ),
            CachePeriod::For(Duration::from_secs(60))
        );
    }

    #[test]
    fn no_store_means_zero() {
        assert_eq!(
            cache_period(&["no-store, max-age=60"], None, at(0)),
            CachePeriod::NoStore
        );
        assert_eq!(
            cache_period(&["max-age=60", "no-store"], None, at(0)),
            CachePeriod::NoStore
        );
    }

    #[test]
    fn expires_relative_to_now() {
        // 1994-11-06 08:49:37 UTC = 784111777.
        assert_eq!(
            httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(
            cache_period(
                &[],
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                at(784_111_777 - 100)
            ),
            CachePeriod::For(Duration::from_secs(100))
        );
        assert_eq!(
            cache_period(
                &[],
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                at(784_111_777 + 100)
            ),
            CachePeriod::For(Duration::ZERO)
        );
        assert_eq!(
            cache_period(&[], Some("garbage"), at(0)),
            CachePeriod::For(Duration::ZERO)
        );
    }

    #[test]
    fn nothing_usable() {
        assert_eq!(cache_period(&[], None, at(0)), CachePeriod::Unspecified);
        assert_eq!(
            cache_period(&["public"], None, at(0)),
            CachePeriod::Unspecified
        );
        assert_eq!(
            cache_period(&["max-age=abc"], None, at(0)),
            CachePeriod::Unspecified
        );
    }

    #[test]
    fn httpdate_rejects_malformed() {
        for s in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(httpdate_parse(s), None, "{s}");
        }
        assert_eq!(httpdate_parse("Thu, 01 Jan 1970 00:00:00 GMT"), Some(at(0)));
        assert_eq!(
            httpdate_parse("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(at(951_825_600))
        );
    }
}
