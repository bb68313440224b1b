//! Human durations on the command line: `90`, `1500ms`, `30s`, `5m`, `1h`, `2d`, `1m30s`.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parses a duration: whole numbers each followed by a unit (`ms`, `s`/`sec`/`secs`,
/// `m`/`min`/`mins`, `h`, `d`), summed; a bare number is seconds. Surrounding whitespace is
/// ignored.
///
/// # Errors
///
/// [`Error::Usage`] for anything else (no number, an unknown unit, a fraction, a negative value) and
/// for a total that overflows [`Duration`]. Callers bound the result themselves (TTL, backoff).
pub fn parse(s: &str) -> Result<Duration> {
    let t = s.trim();
    let bad = || {
        Error::usage(format!(
            "invalid duration {s:?}: use e.g. 30s, 5m, 1h, 1500ms (a bare number means seconds)"
        ))
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(unit).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// clap value parser.
pub fn arg(s: &str) -> std::result::Result<Duration, String> {
    parse(s).map_err(|e| e.to_string())
}

/// `300s` -> `5m`, for messages.
pub fn display(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 && s < 10 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "m", "5x", "-1s", "1.5s", "s5", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(display(Duration::from_secs(300)), "5m");
        assert_eq!(display(Duration::from_millis(1500)), "1500ms");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panic(s in ".*") {
            let _ = parse(&s);
        }

        #[test]
        fn written_durations_read_back(h in 0u64..1000, m in 0u64..1000, sec in 0u64..1000, ms in 0u64..1000) {
            let d = parse(&format!("{h}h{m}m{sec}s{ms}ms")).unwrap();
            proptest::prop_assert_eq!(d, Duration::from_millis(((h * 60 + m) * 60 + sec) * 1000 + ms));
            proptest::prop_assert_eq!(parse(&display(d)).unwrap().as_secs(), d.as_secs());
        }
    }
}
