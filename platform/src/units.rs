//! Human-readable sizes (`200MiB`) and durations (`10m`) used by service agreements and configuration.

use std::fmt;
use std::time::Duration;

/// A number of bytes, parsed from `512`, `64KiB`, `200MiB`, `20GiB`, `1.5GB`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 =
            number.parse().map_err(|_| format!("`{input}` is not a size (expected e.g. 512, 64KiB, 200MiB, 20GiB)"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "`{input}` has unknown size unit `{other}` (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                ))
            }
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("`{input}` is out of range"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if self.0.is_multiple_of(size) {
                    write!(f, "{}{unit}", self.0 / size)
                } else {
                    write!(f, "{value:.2}{unit}")
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses `250ms`, `2s`, `10m`, `1h`, `1d` (one number and one unit; a bare number is refused because
/// the unit would be a guess).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{input}` has no unit (expected e.g. 500ms, 2s, 10m, 1h, 1d)"))?;
    let (number, unit) = s.split_at(split);
    let number: f64 =
        number.parse().map_err(|_| format!("`{input}` is not a duration (expected e.g. 500ms, 2s, 10m, 1h, 1d)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        other => return Err(format!("`{input}` has unknown duration unit `{other}` (use ms, s, m, h, d)")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("`{input}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way agreements write them, for messages that quote a limit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Serialises a duration as agreements write it (`10m`), for API answers that echo an agreement.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub fn serialize_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 65_536);
        assert_eq!(ByteSize::parse("200MiB").unwrap().0, 200 * 1024 * 1024);
        assert_eq!(ByteSize::parse("20GiB").unwrap().0, 20 << 30);
        assert_eq!(ByteSize::parse("1.5GB").unwrap().0, 1_500_000_000);
        assert_eq!(ByteSize::parse(" 10 MB ").unwrap().0, 10_000_000);
    }

    #[test]
    fn sizes_refuse_garbage_with_the_input_in_the_message() {
        let err = ByteSize::parse("12 parsecs").unwrap_err();
        assert!(err.contains("parsecs"), "{err}");
        assert!(ByteSize::parse("MiB").unwrap_err().contains("not a size"));
        assert!(ByteSize::parse("-1MiB").is_err());
    }

    #[test]
    fn sizes_display_compactly() {
        assert_eq!(ByteSize(200 << 20).to_string(), "200MiB");
        assert_eq!(ByteSize(1536).to_string(), "1.50KiB");
        assert_eq!(ByteSize(12).to_string(), "12B");
    }

    #[test]
    fn durations_parse_and_format_round_trip() {
        for (text, ms) in [("50ms", 50), ("2s", 2000), ("10m", 600_000), ("1h", 3_600_000), ("1d", 86_400_000)] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
    }

    #[test]
    fn durations_need_a_known_unit() {
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10 weeks").unwrap_err().contains("weeks"));
    }
}
