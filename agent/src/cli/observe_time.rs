//! Times for `sluice observe`: RFC 3339 in UTC both ways, and `--since/--until` as Hubble's CLI
//! takes them (an RFC 3339 instant, or a duration ago: `30s`, `5m`, `2h`, `1d`).

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of `civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let (y, m, d) = civil(t.seconds.div_euclid(86_400));
    let secs = t.seconds.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z", secs / 3600, secs / 60 % 60, secs % 60, t.nanos)
}

const ACCEPTED: &str =
    "an RFC 3339 time (2026-12-05T09:00:00Z, 2026-12-05T10:00:00+01:00) or a duration ago (30s, 5m, 2h, 1d)";

/// `flag` names the option in the error.
pub fn parse(flag: &str, s: &str, now_s: i64) -> anyhow::Result<prost_types::Timestamp> {
    let bad = || anyhow::anyhow!("{flag} {s:?} is not a time; accepted: {ACCEPTED}");
    let digits = s.len() > 1 && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if let Some(unit) = s.chars().last().filter(|c| digits && c.is_ascii_alphabetic()) {
        let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        return Ok(prost_types::Timestamp { seconds: now_s - n.checked_mul(mult).ok_or_else(bad)?, nanos: 0 });
    }
    let (date, time) = s.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let mut dp = date.split('-');
    let (y, mo, d) =
        (num(dp.next().ok_or_else(bad)?)?, num(dp.next().ok_or_else(bad)?)?, num(dp.next().ok_or_else(bad)?)?);
    let (clock, offset_s) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, off) = time.split_at(i);
        let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (c, sign * (num(oh)? * 3600 + num(om)? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut tp = hms.split(':');
    let (h, mi, se) =
        (num(tp.next().ok_or_else(bad)?)?, num(tp.next().ok_or_else(bad)?)?, num(tp.next().ok_or_else(bad)?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || frac.len() > 9 {
        return Err(bad());
    }
    let nanos = if frac.is_empty() { 0 } else { num(frac)? * 10i64.pow(9 - frac.len() as u32) };
    let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    Ok(prost_types::Timestamp { seconds, nanos: nanos as i32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = prost_types::Timestamp { seconds: 1_796_461_200, nanos: 5 };
        assert_eq!(rfc3339(Some(&t)), "2026-12-05T09:00:00.000000005Z");
        assert_eq!(rfc3339(Some(&prost_types::Timestamp { seconds: 0, nanos: 0 })), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn since_and_until_take_rfc3339_or_a_duration_ago() {
        let t = |s: &str| parse("--since", s, 1_000_000).map(|t| (t.seconds, t.nanos));
        assert_eq!(t("2026-12-05T09:00:00Z").ok(), Some((1_796_461_200, 0)));
        assert_eq!(t("2026-12-05T10:00:00.5+01:00").ok(), Some((1_796_461_200, 500_000_000)));
        assert_eq!(t("1970-01-01T00:00:00-00:30").ok(), Some((1800, 0)));
        assert_eq!(t("5m").ok(), Some((1_000_000 - 300, 0)));
        assert_eq!(t("1d").ok(), Some((1_000_000 - 86_400, 0)));
        // Round trip through the printer.
        let p = parse("--since", "2024-02-29T23:59:59.123Z", 0).expect("leap day");
        assert_eq!(rfc3339(Some(&p)), "2024-02-29T23:59:59.123000000Z");
        for bad in ["yesterday", "5w", "2026-13-01T00:00:00Z", "2026-12-05", "2026-12-05T09:00:00"] {
            let e = t(bad).expect_err(bad).to_string();
            assert!(e.contains("--since") && e.contains(bad) && e.contains("RFC 3339"), "{e}");
        }
    }
}
