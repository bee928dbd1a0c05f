//! Byte sizes on the command line: `4096`, `1MiB`, `64k`, `1.5G`, `2TiB`.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from a number with an optional binary unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let unit_mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB or TiB)")),
        };
        let bytes = if num.contains('.') {
            let v: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
            v * unit_mult as f64
        } else {
            let v: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
            return v.checked_mul(unit_mult).map(ByteSize).ok_or_else(|| format!("size too large: {s:?}"));
        };
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("size out of range: {s:?}"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, mult) in UNITS {
            if self.0 >= mult {
                return if self.0.is_multiple_of(mult) {
                    write!(f, "{}{name}", self.0 / mult)
                } else {
                    write!(f, "{:.1}{name}", self.0 as f64 / mult as f64)
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn parses_units() {
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("1MiB".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("64k".parse(), Ok(ByteSize(64 << 10)));
        assert_eq!("1.5G".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
    }
}
