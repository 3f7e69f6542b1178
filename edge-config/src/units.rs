//! Units an operator writes: sizes ("64MiB", "1GB", plain bytes) and durations ("50ms", "2s",
//! "1m"). Parsers are total: every input is either a value or an error saying what was expected.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value; expected {expected}")]
    Empty { expected: &'static str },
    #[error("{found:?} is not a {what}; expected {expected}")]
    Invalid {
        found: String,
        what: &'static str,
        expected: &'static str,
    },
    #[error("{found:?} is too large")]
    Overflow { found: String },
}

const SIZE_EXPECTED: &str = "a size such as \"64MiB\", \"1GB\", \"512KiB\" or a number of bytes";
const DURATION_EXPECTED: &str = "a duration such as \"50ms\", \"2s\", \"1m\" or \"1h\"";

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '_')
        .map_or(s.len(), |(i, _)| i);
    (&s[..end], s[end..].trim_start())
}

fn parse_digits(
    digits: &str,
    whole: &str,
    what: &'static str,
    expected: &'static str,
) -> Result<u64, UnitError> {
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty() {
        return Err(UnitError::Invalid {
            found: whole.to_string(),
            what,
            expected,
        });
    }
    cleaned.parse::<u64>().map_err(|_| UnitError::Overflow {
        found: whole.to_string(),
    })
}

/// Parse a size in bytes. Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) suffixes,
/// `B` or no suffix for bytes; case of the suffix matters only for `b`/`B` (bytes only).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(UnitError::Empty {
            expected: SIZE_EXPECTED,
        });
    }
    let (digits, suffix) = split_number(s);
    let n = parse_digits(digits, input, "size", SIZE_EXPECTED)?;
    let factor: u64 = match suffix {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(UnitError::Invalid {
                found: input.to_string(),
                what: "size",
                expected: SIZE_EXPECTED,
            })
        }
    };
    n.checked_mul(factor).ok_or_else(|| UnitError::Overflow {
        found: input.to_string(),
    })
}

/// Parse a duration: a whole number followed by `ms`, `s`, `m` or `h` (a unit is required, so
/// "10" is never read as seconds when milliseconds were meant).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(UnitError::Empty {
            expected: DURATION_EXPECTED,
        });
    }
    let (digits, suffix) = split_number(s);
    let n = parse_digits(digits, input, "duration", DURATION_EXPECTED)?;
    let ms_per: u64 = match suffix {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(UnitError::Invalid {
                found: input.to_string(),
                what: "duration",
                expected: DURATION_EXPECTED,
            })
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::Overflow {
            found: input.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1024", Some(1024)),
            ("64MiB", Some(64 << 20)),
            ("64 MiB", Some(64 << 20)),
            ("1GB", Some(1_000_000_000)),
            ("1_000", Some(1000)),
            ("4GiB", Some(4 << 30)),
            ("512KiB", Some(512 << 10)),
            ("16777216TiB", None),
            ("", None),
            ("-1", None),
            ("1.5GiB", None),
            ("MiB", None),
            ("12 parsecs", None),
            ("１２MiB", None),
            ("99999999999999999999999", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_size(input).ok(), *want, "{input:?}");
        }
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(UnitError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("20000000TiB"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn durations() {
        let table: &[(&str, Option<Duration>)] = &[
            ("50ms", Some(Duration::from_millis(50))),
            ("2s", Some(Duration::from_secs(2))),
            ("1m", Some(Duration::from_secs(60))),
            ("1h", Some(Duration::from_secs(3600))),
            ("10", None),
            ("", None),
            ("-5s", None),
            ("1.5s", None),
            ("5 days", None),
            ("５s", None),
            ("18446744073709551615h", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_duration(input).ok(), *want, "{input:?}");
        }
    }
}
