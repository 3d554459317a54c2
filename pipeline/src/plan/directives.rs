//! Per-file options, written as SQL comments so the file stays plain SQL that any
//! SQL tool can read: `-- sluice: <directive>`.
//!
//! One directive exists:
//!
//! - `-- sluice: late events update windows for <duration>` (e.g. `2 days`): a late
//!   event whose window closed less than `<duration>` ago is folded into the window,
//!   and the window's rows in the table are replaced by the corrected ones. Later
//!   events still go to `late_events`.

/// The directives of one SQL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// How long after a window closed late events still correct it, µs.
    pub corrections: Option<i64>,
}

const PREFIX: &str = "sluice:";
const CORRECTIONS: &str = "late events update windows for ";

/// Reads the `-- sluice:` lines of a SQL file; an unknown or malformed one is an
/// error naming its line.
pub fn parse(sql: &str) -> Result<Directives, String> {
    let mut directives = Directives::default();
    for (number, line) in sql.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix("--") else { continue };
        let Some(directive) = comment.trim_start().strip_prefix(PREFIX) else { continue };
        let directive = directive.trim();
        let line = number + 1;
        match directive.strip_prefix(CORRECTIONS) {
            Some(duration) => {
                let micros = parse_duration(duration)
                    .ok_or_else(|| format!("line {line}: `{duration}` is not a duration like `2 days`, `6 hours` or `30 minutes`"))?;
                directives.corrections = Some(micros);
            }
            None => {
                return Err(format!(
                    "line {line}: unknown directive `-- sluice: {directive}`; the one known is \
                     `-- sluice: {CORRECTIONS}<duration>` (e.g. `2 days`)"
                ))
            }
        }
    }
    Ok(directives)
}

/// `<n> <unit>` with unit seconds, minutes, hours or days (singular or plural), µs.
fn parse_duration(text: &str) -> Option<i64> {
    let (number, unit) = text.trim().split_once(char::is_whitespace)?;
    let n: i64 = number.parse().ok().filter(|n| *n > 0)?;
    let unit_us: i64 = match unit.trim().trim_end_matches('s') {
        "second" => 1_000_000,
        "minute" => 60_000_000,
        "hour" => 3_600_000_000,
        "day" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_are_read_from_their_comment() {
        let sql = "-- per day\n  --   sluice: late events update windows for 2 days\nSELECT 1";
        assert_eq!(parse(sql).unwrap().corrections, Some(2 * 86_400_000_000));
        assert_eq!(parse("-- sluice: late events update windows for 1 hour").unwrap().corrections, Some(3_600_000_000));
        assert_eq!(parse("SELECT 1 -- no directive").unwrap(), Directives::default());
    }

    #[test]
    fn a_bad_directive_names_its_line() {
        let err = parse("SELECT 1\n-- sluice: late events update windows for ever").unwrap_err();
        assert!(err.contains("line 2") && err.contains("`ever`"), "{err}");
        let err = parse("-- sluice: emit early").unwrap_err();
        assert!(err.contains("line 1") && err.contains("unknown directive"), "{err}");
        assert!(parse("-- sluice: late events update windows for 0 days").is_err());
        assert!(parse("-- sluice: late events update windows for 3 fortnights").is_err());
    }
}
