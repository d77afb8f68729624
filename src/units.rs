//! Byte sizes on the command line: `512MiB`, `2GiB`, `1.5GB`, `65536` (plain bytes).
//!
//! Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal units (KB, MB, GB, TB) powers
//! of 1000, as their names say; case does not matter and a space before the unit is allowed.
//! Bare `K`/`M`/`G` are rejected as ambiguous. Fractions are allowed with a unit and rounded down
//! to whole bytes.

/// A size that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{input}': {reason} (examples: 512MiB, 2GiB, 1.5GB, 65536)")]
pub struct SizeError {
    /// What was given.
    pub input: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Parse a byte size.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: s.to_string(),
        reason,
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "k" | "m" | "g" | "t" => {
            return Err(err(
                "a bare K/M/G/T is ambiguous; write KiB/MiB/GiB or KB/MB/GB",
            ))
        }
        _ => return Err(err("unknown unit")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| err("too large"));
    }
    if mult == 1 {
        return Err(err("plain bytes must be a whole number"));
    }
    let x: f64 = num.parse().map_err(|_| err("not a number"))?;
    let v = x * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(v as u64)
}

/// Human-readable binary size: `1.50 GiB`, `512.00 MiB`, `100 B`.
pub fn format_size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < U.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size(" 64 kib "), Ok(65536));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for bad in [
            "",
            "MiB",
            "12XB",
            "1.5",
            "2G",
            "1e3MiB",
            "-5MiB",
            "99999999999TiB",
            "1..2GiB",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
