//! Go `time.ParseDuration` syntax (what nats-server accepts for `allow_responses.expires`):
//! an optional sign, then one or more `<decimal><unit>` parts, units ns, us, µs, ms, s, m, h;
//! `"0"` alone is allowed.

const UNITS_IN_NANOS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// `nanos` in Go duration syntax that [`parse_go_duration`] (and Go's `time.ParseDuration`)
/// reads back exactly: `2m`, `5s500ms`, `-1ns`, `0`.
pub(crate) fn format_go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0".to_owned();
    }
    let mut rest = u128::from(nanos.unsigned_abs());
    let mut text = if nanos < 0 {
        "-".to_owned()
    } else {
        String::new()
    };
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if rest >= size {
            text.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    text
}

/// A signed duration in nanoseconds, as Go represents it.
pub(crate) fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid = || {
        format!("invalid duration {text:?} (expected Go syntax such as \"5s\", \"2m\", \"500ms\", \"1h30m\")")
    };
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after_number) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let scale = UNITS_IN_NANOS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(invalid)?;
        let whole_value: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part = whole_value.checked_mul(scale).ok_or_else(invalid)?;
        let mut fraction_scale = scale;
        for digit in fraction.bytes() {
            fraction_scale /= 10;
            part += u128::from(digit - b'0') * fraction_scale;
        }
        total_nanos = total_nanos.checked_add(part).ok_or_else(invalid)?;
        rest = after_unit;
    }
    let magnitude = i64::try_from(total_nanos).map_err(|_| invalid())?;
    Ok(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::{format_go_duration, parse_go_duration};

    #[test]
    fn formatting_reads_back() {
        for nanos in [
            0,
            1,
            -1,
            500_000_000,
            5_500_000_000,
            120_000_000_000,
            5_400_000_000_123,
        ] {
            let text = format_go_duration(nanos);
            assert_eq!(parse_go_duration(&text), Ok(nanos), "{text}");
        }
        assert_eq!(format_go_duration(120_000_000_000), "2m");
    }

    #[test]
    fn go_syntax() {
        let second = 1_000_000_000;
        let cases = [
            ("5s", 5 * second),
            ("2m", 120 * second),
            ("500ms", second / 2),
            ("1h30m", 5400 * second),
            ("1.5s", 3 * second / 2),
            ("0", 0),
            ("-1s", -second),
            ("10us", 10_000),
            ("10\u{b5}s", 10_000),
            ("7ns", 7),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse_go_duration(text), Ok(nanos), "{text}");
        }
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5x",
            "1.2.3s",
            "-",
            "99999999999h",
            "٣s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
