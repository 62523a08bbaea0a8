//! Durations as people write them in config files and on the command line
//! (`"500ms"`, `"10s"`, `"5m"`, `"1h"`), and [`Dur`], one bounded to
//! `MIN..=MAX` seconds and checked while deserializing.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as a string with a unit (`"500ms"`, `"10s"`, `"5m"`),
/// bounded to `MIN..=MAX` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur<const MIN: u64, const MAX: u64>(pub Duration);

impl<const MIN: u64, const MAX: u64> Dur<MIN, MAX> {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Dur<MIN, MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Dur<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = parse_duration(&s).map_err(serde::de::Error::custom)?;
        if v < Duration::from_secs(MIN) || v > Duration::from_secs(MAX) {
            return Err(serde::de::Error::custom(format!(
                "must be between {MIN}s and {MAX}s, got {s}"
            )));
        }
        Ok(Self(v))
    }
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"`. A bare number is refused: a
/// unit-less duration is the classic source of off-by-1000 configs.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s, m or h (e.g. \"10s\")"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    // Finite but beyond Duration's range (e.g. "1e300h" spelled out) is an
    // error too: `from_secs_f64` would panic (found by the alert_expr fuzzer).
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is out of range"))
}

/// Formats a duration the way `parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_beyond_range_are_errors_not_panics() {
        let huge = format!("{}h", "9".repeat(400));
        assert!(parse_duration(&huge).unwrap_err().contains("out of range"));
        assert!(parse_duration(&format!("{}s", "9".repeat(30))).is_err());
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn dur_checks_its_bounds_and_round_trips() {
        let d: Dur<1, 60> = serde_json::from_str("\"30s\"").unwrap();
        assert_eq!(d.get(), Duration::from_secs(30));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"30s\"");
        let err = serde_json::from_str::<Dur<1, 60>>("\"2m\"").unwrap_err();
        assert!(err.to_string().contains("between 1s and 60s"), "{err}");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
