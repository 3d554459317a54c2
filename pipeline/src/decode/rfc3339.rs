//! A strict RFC 3339 parser: the contract's event-time format, to microseconds.

/// Parses `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` (`t`/`z` accepted too) to µs since
/// the epoch, UTC; digits past the sixth are truncated toward the past.
pub fn parse_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(b, 0, 4)? as i32;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for (k, &d) in b[start..i].iter().enumerate().take(6) {
            micros += i64::from(d - b'0') * 10i64.pow(5 - k as u32);
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = digits(b, i + 1, 2)?;
            let m = digits(b, i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let days = i64::from(date.num_days_from_ce()) - 719_163; // days from 0001-01-01 to 1970-01-01
    // A leap second (:60) reads as the last microsecond of its minute's 59th second.
    let (second, micros) = if second == 60 { (59, 999_999) } else { (second, micros) };
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Some(secs * 1_000_000 + micros)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

use chrono::Datelike;

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_micros(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn agrees_with_chrono_on_valid_timestamps() {
        for s in [
            "2026-03-01T09:15:02Z",
            "2026-03-01T09:15:02.1Z",
            "2026-03-01T09:15:02.125Z",
            "2026-03-01T09:15:02.123456Z",
            "2026-03-01T09:15:02.123456789Z",
            "2026-03-01t09:15:02.5z",
            "2026-03-01T11:15:02.125+02:00",
            "2026-03-01T04:45:02.125-04:30",
            "1969-12-31T23:59:59.999999Z",
            "2024-02-29T00:00:00Z",
        ] {
            assert_eq!(parse_micros(s), Some(chrono_micros(s)), "{s}");
        }
    }

    #[test]
    fn truncates_nanoseconds_toward_the_past() {
        assert_eq!(parse_micros("1969-12-31T23:59:59.9999999Z"), Some(-1));
        assert_eq!(parse_micros("2026-03-01T00:00:00.000000999Z"), parse_micros("2026-03-01T00:00:00Z"));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for s in [
            "yesterday",
            "2026-03-01 09:15:02",
            "2026-03-01T09:15:02",
            "2026-03-01 09:15:02Z",
            "2026-03-01T09:15:02.Z",
            "2026-03-01T09:15:02.1234567890Z",
            "2026-02-30T09:15:02Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T09:15:02+0200",
            "2026-03-01T09:15:02Zjunk",
            "",
        ] {
            assert_eq!(parse_micros(s), None, "{s}");
        }
    }
}
