//! Durations as users write them: `500ms`, `30s`, `5m`, `1h`, `1d`, and combinations (`1m30s`).

/// Parses a duration into milliseconds.
///
/// ```
/// assert_eq!(rulechain::duration::parse("1m30s"), Ok(90_000));
/// ```
pub fn parse(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: i64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration `{t}`: expected a number at `{rest}`"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration `{t}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("bad duration `{t}`: missing unit after {n}")),
            other => return Err(format!("bad duration `{t}`: unknown unit `{other}`")),
        };
        total = n
            .checked_mul(ms)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("bad duration `{t}`: too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats milliseconds as the shortest duration text (`90000` → `1m30s`).
pub fn format(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_junk() {
        assert_eq!(parse("500ms"), Ok(500));
        assert_eq!(parse("30s"), Ok(30_000));
        assert_eq!(parse("5m"), Ok(300_000));
        assert_eq!(parse("1h"), Ok(3_600_000));
        assert_eq!(parse("1h30m"), Ok(5_400_000));
        assert!(parse("30").unwrap_err().contains("missing unit"));
        assert!(parse("3x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse("s").is_err());
        assert!(parse("99999999999999999999s").is_err());
        assert_eq!(format(90_000), "1m30s");
    }
}
