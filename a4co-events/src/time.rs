//! Times on the wire: RFC 3339 in UTC (`Z`, 0/3/6/9 fraction digits), byte for byte what
//! chrono's own serde writes and reads, at a fraction of its cost. chrono writes through
//! `collect_str`, which serde_json escapes one formatted piece (often one character) at a
//! time, and reads through a general parser; in a typical event the two cost more than the
//! rest of the envelope together. Catalog payloads use these with
//! `#[serde(serialize_with = ..., deserialize_with = ...)]`; anything but the canonical
//! form (`2026-01-15T10:00:00.123Z`) is read by chrono's parser, with its errors. Public
//! for services' own records (the saga store uses them):
//!
//! ```
//! use chrono::{DateTime, Utc};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Hold {
//!     #[serde(serialize_with = "a4co_events::time::utc")]
//!     #[serde(deserialize_with = "a4co_events::time::de_utc")]
//!     until: DateTime<Utc>,
//! }
//!
//! let until = "2026-01-15T10:00:00.123Z".parse().unwrap();
//! let json = serde_json::to_string(&Hold { until }).unwrap();
//! assert_eq!(json, r#"{"until":"2026-01-15T10:00:00.123Z"}"#);
//! assert_eq!(json, serde_json::to_string(&serde_json::json!({ "until": until })).unwrap());
//! let back: Hold = serde_json::from_str(&json).unwrap();
//! assert_eq!(back.until, until);
//! ```

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// Serializes a time as one RFC 3339 string.
///
/// # Errors
/// The serializer's.
pub fn utc<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// [`utc`] for an optional time (`None` as `null`; fields skip it when absent).
///
/// # Errors
/// The serializer's.
#[allow(clippy::ref_option)]
pub fn opt_utc<S: Serializer>(t: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => utc(t, serializer),
        None => serializer.serialize_none(),
    }
}

/// Reads a time as chrono's `Deserialize` does (any RFC 3339 offset, converted to UTC).
///
/// # Errors
/// Not a string, or not RFC 3339 (chrono's message).
pub fn de_utc<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(UtcVisitor)
}

/// [`de_utc`] for an optional time (`null` is `None`; fields default to `None` when absent).
///
/// # Errors
/// As [`de_utc`].
pub fn de_opt_utc<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<DateTime<Utc>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 date and time, or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            de_utc(d).map(Some)
        }
    }
    deserializer.deserialize_option(OptVisitor)
}

struct UtcVisitor;

impl Visitor<'_> for UtcVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        match parse_canonical(s) {
            Some(t) => Ok(t),
            None => s
                .parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` without a leap second; `None` for anything else, which
/// is then chrono's to judge.
fn parse_canonical(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let (&b'Z', b) = b.split_last()? else {
        return None;
    };
    if b.len() < 19 || [b[4], b[7], b[10], b[13], b[16]] != *b"--T::" {
        return None;
    }
    let digit = |i: usize| b[i].is_ascii_digit().then(|| u32::from(b[i] - b'0'));
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    let year = two(0)? * 100 + two(2)?;
    let (month, day, hour, minute, second) = (two(5)?, two(8)?, two(11)?, two(14)?, two(17)?);
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut n = 0_u32;
            for d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + u32::from(d - b'0');
            }
            // At most 9 digits: the exponent is 0..=8.
            n * 10_u32.pow(9 - u32::try_from(digits.len()).ok()?)
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_reads(s: &str) -> Option<DateTime<Utc>> {
        serde_json::from_value::<DateTime<Utc>>(serde_json::Value::String(s.to_owned())).ok()
    }

    proptest! {
        #[test]
        fn times_are_written_exactly_as_chrono_writes_them(
            secs in -62_135_596_800_i64..253_402_300_799,
            nanos in prop_oneof![
                Just(0_u32),
                (0_u32..1000).prop_map(|ms| ms * 1_000_000),
                (0_u32..1_000_000).prop_map(|us| us * 1000),
                0_u32..1_000_000_000,
            ],
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut ours = Vec::new();
            utc(&t, &mut serde_json::Serializer::new(&mut ours)).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&t).unwrap());
        }

        #[test]
        fn the_fast_reader_agrees_with_chrono(
            // Fields mostly in range, sometimes just out of it (month 13, day 32, hour 24,
            // second 60, Feb 30, ...), so both the fast path and its refusals are exercised.
            (year, month, day) in (0_u32..10_000, 0_u32..14, 0_u32..33),
            (hour, minute, second) in (0_u32..25, 0_u32..61, 0_u32..61),
            fraction in proptest::collection::vec(0_u8..10, 0..12),
            separators in prop_oneof![Just(*b"--T::Z"), Just(*b"--T::Z"), Just(*b"--t::z"), Just(*b"-/T: Z")],
        ) {
            let f: String = fraction.iter().map(|d| char::from(b'0' + d)).collect();
            let [s1, s2, t, c1, c2, z] = separators.map(char::from);
            let fraction = if f.is_empty() { String::new() } else { format!(".{f}") };
            let text = format!(
                "{year:04}{s1}{month:02}{s2}{day:02}{t}{hour:02}{c1}{minute:02}{c2}{second:02}{fraction}{z}"
            );
            let ours = de_utc(serde_json::Value::String(text.clone())).ok();
            prop_assert_eq!(ours, chrono_reads(&text), "{}", text);
            if let Some(fast) = parse_canonical(&text) {
                prop_assert_eq!(Some(fast), chrono_reads(&text), "{}", text);
            }
        }

        #[test]
        fn written_times_read_back(secs in -62_135_596_800_i64..253_402_300_799, nanos in 0_u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let text = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            prop_assert_eq!(parse_canonical(&text), Some(t));
        }
    }

    #[test]
    fn other_forms_and_errors_are_chronos() {
        for text in [
            "2026-01-15T10:00:00+02:00",
            "2016-12-31T23:59:60Z",
            "2026-01-15 10:00:00Z",
        ] {
            let ours = de_utc(serde_json::Value::String(text.into())).ok();
            assert_eq!(ours, chrono_reads(text), "{text}");
        }
        let err = de_utc(serde_json::Value::String("2026-02-30T10:00:00Z".into())).unwrap_err();
        let theirs =
            serde_json::from_value::<DateTime<Utc>>("2026-02-30T10:00:00Z".into()).unwrap_err();
        assert_eq!(err.to_string(), theirs.to_string());
        assert!(de_opt_utc(serde_json::Value::Null).unwrap().is_none());
    }
}
