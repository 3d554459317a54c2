//! Per-file options, written as SQL comments so the file stays plain SQL that any
//! SQL tool can read: `-- sluice: <directive>`.
//!
//! Three directives exist:
//!
//! - `-- sluice: late events update windows for <duration>` (e.g. `2 days`): a late
//!   event whose window closed less than `<duration>` ago is folded into the window,
//!   and the window's rows in the table are replaced by the corrected ones. Later
//!   events still go to `late_events`.
//! - `-- sluice: current state[, removed when <condition>]`: the query's `GROUP BY`
//!   without a window keeps one row per key, updated by each of the key's events in
//!   event-time order; an event for which the SQL `<condition>` holds removes the
//!   key's row, and a later event starts it afresh ([`crate::keyed`]).
//! - `-- sluice: repartition`: in a group (`run --group`), every shard folds its
//!   share of the input partitions into panes, and the table's shard merges them
//!   through a repartition topic ([`crate::repartition`]); one process ignores it.
//!   Tumbling and hopping windows over topics only.

/// The directives of one SQL file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// How long after a window closed late events still correct it, µs.
    pub corrections: Option<i64>,
    /// The query keeps the current state per key.
    pub current_state: Option<CurrentState>,
    /// In a group, the windows are folded by every shard and merged by the table's.
    pub repartition: bool,
}

/// The plan's fingerprint holds this text: `repartition` shows only when set, so
/// files without it keep the fingerprints (and tables) they had.
impl std::fmt::Debug for Directives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Directives");
        s.field("corrections", &self.corrections).field("current_state", &self.current_state);
        if self.repartition {
            s.field("repartition", &true);
        }
        s.finish()
    }
}

/// `-- sluice: current state[, removed when <condition>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentState {
    /// A SQL condition over the aggregate's input rows; such a row removes its key.
    pub removed_when: Option<String>,
}

const PREFIX: &str = "sluice:";
const CORRECTIONS: &str = "late events update windows for ";
const CURRENT_STATE: &str = "current state";
const REMOVED_WHEN: &str = ", removed when";
const REPARTITION: &str = "repartition";

/// Reads the `-- sluice:` lines of a SQL file; an unknown or malformed one is an
/// error naming its line.
pub fn parse(sql: &str) -> Result<Directives, String> {
    let mut directives = Directives::default();
    for (number, line) in sql.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix("--") else { continue };
        let Some(directive) = comment.trim_start().strip_prefix(PREFIX) else { continue };
        let directive = directive.trim();
        let line = number + 1;
        if let Some(duration) = directive.strip_prefix(CORRECTIONS) {
            let micros = parse_duration(duration).ok_or_else(|| format!("line {line}: `{duration}` is not a duration like `2 days`, `6 hours` or `30 minutes`"))?;
            directives.corrections = Some(micros);
        } else if let Some(rest) = directive.strip_prefix(CURRENT_STATE) {
            let removed_when = match rest.strip_prefix(REMOVED_WHEN) {
                Some(condition) if condition.starts_with(char::is_whitespace) && !condition.trim().is_empty() => Some(condition.trim().to_string()),
                Some(_) => return Err(format!("line {line}: `removed when` needs a condition, e.g. `-- sluice: current state, removed when action = 'close'`")),
                None if rest.trim().is_empty() => None,
                None => return Err(format!("line {line}: after `current state` comes nothing or `, removed when <condition>`, not `{}`", rest.trim())),
            };
            directives.current_state = Some(CurrentState { removed_when });
        } else if directive == REPARTITION {
            directives.repartition = true;
        } else {
            return Err(format!(
                "line {line}: unknown directive `-- sluice: {directive}`; the known ones are \
                 `-- sluice: {CORRECTIONS}<duration>` (e.g. `2 days`), \
                 `-- sluice: {CURRENT_STATE}[, removed when <condition>]` and `-- sluice: {REPARTITION}`"
            ));
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
    fn current_state_is_read_with_its_removal_condition() {
        let current = |sql: &str| parse(sql).unwrap().current_state;
        assert_eq!(current("-- sluice: current state\nSELECT 1"), Some(CurrentState { removed_when: None }));
        assert_eq!(
            current("-- sluice: current state, removed when action = 'close'"),
            Some(CurrentState { removed_when: Some("action = 'close'".into()) })
        );
        assert!(parse("-- sluice: current state, removed when ").unwrap_err().contains("needs a condition"));
        assert!(parse("-- sluice: current state forever").unwrap_err().contains("not `forever`"));
    }

    #[test]
    fn repartition_is_read_and_shows_in_the_fingerprint_text_only_when_set() {
        assert!(parse("-- sluice: repartition\nSELECT 1").unwrap().repartition);
        assert!(parse("-- sluice: repartition by key").unwrap_err().contains("unknown directive"));
        // The text every fingerprint so far was computed from.
        assert_eq!(format!("{:?}", Directives::default()), "Directives { corrections: None, current_state: None }");
        let set = Directives { repartition: true, ..Directives::default() };
        assert_eq!(format!("{set:?}"), "Directives { corrections: None, current_state: None, repartition: true }");
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
