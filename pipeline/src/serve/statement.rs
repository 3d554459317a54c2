//! What a client may say to the served lake: queries, `EXPLAIN`, `SHOW`,
//! transactions and cursors (which only read), and `SET` of a short list of
//! session settings. Everything else is refused here, by name, before planning;
//! DataFusion's own [`SQLOptions`] check of the plan stands behind it.

use datafusion::execution::context::SQLOptions;
use datafusion::sql::sqlparser::ast::{Set, Statement};

/// Session settings a client may change; they affect only its own session.
const SETTABLE: [&str; 12] = [
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
    "time zone",
];

/// The plan check behind [`check`]: no DDL, no DML, no `SET` reaching DataFusion.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Why a statement is refused: a message naming it, and its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// SQLSTATE 25006, read_only_sql_transaction.
pub const READ_ONLY: &str = "25006";
/// SQLSTATE 42501, insufficient_privilege.
pub const NOT_ALLOWED: &str = "42501";

/// `what` refused because the lake is served read-only.
fn writes(what: &str) -> Refused {
    Refused { code: READ_ONLY, message: format!("{what}: the served lake is read-only (queries, EXPLAIN, SHOW and SET of session settings only)") }
}

pub fn check(statement: &Statement) -> Result<(), Refused> {
    let refuse = |what: &str| Err(writes(what));
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => Ok(()),
        Statement::Set(set) => check_set(set),
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => refuse("COPY"),
        Statement::Insert(_) => refuse("INSERT"),
        Statement::Update { .. } => refuse("UPDATE"),
        Statement::Delete(_) => refuse("DELETE"),
        Statement::Merge { .. } => refuse("MERGE"),
        Statement::Truncate { .. } => refuse("TRUNCATE"),
        Statement::Drop { .. } => refuse("DROP"),
        Statement::CreateTable(_) => refuse("CREATE TABLE"),
        Statement::CreateView { .. } => refuse("CREATE VIEW"),
        Statement::CreateSchema { .. } => refuse("CREATE SCHEMA"),
        Statement::CreateDatabase { .. } => refuse("CREATE DATABASE"),
        Statement::CreateFunction(_) => refuse("CREATE FUNCTION"),
        Statement::AlterTable { .. } => refuse("ALTER TABLE"),
        other => {
            let text = other.to_string();
            let verb: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_uppercase();
            refuse(&verb)
        }
    }
}

/// For SQL the Postgres parser does not take (DataFusion's `CREATE EXTERNAL
/// TABLE`, say): a write is still refused as one, anything else is a syntax error.
pub fn unparsed(sql: &str, parse_error: impl std::fmt::Display) -> Refused {
    const WRITES: [&str; 11] = ["CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER", "COPY", "TRUNCATE", "MERGE", "GRANT", "REVOKE"];
    let words: Vec<String> = sql.split_whitespace().take(3).map(str::to_uppercase).collect();
    if words.first().is_some_and(|w| WRITES.contains(&w.as_str())) {
        let verb = if words.get(1).is_some_and(|w| w == "EXTERNAL") { words.join(" ") } else { words[..words.len().min(2)].join(" ") };
        return writes(&verb);
    }
    Refused { code: "42601", message: parse_error.to_string() }
}

fn check_set(set: &Set) -> Result<(), Refused> {
    let not_allowed = |name: &str| {
        Err(Refused {
            code: NOT_ALLOWED,
            message: format!("SET {name} is not allowed: a session may set only {}", SETTABLE[..SETTABLE.len() - 1].join(", ")),
        })
    };
    match set {
        Set::SingleAssignment { variable, .. } => {
            let name = variable.to_string().to_lowercase();
            if SETTABLE.contains(&name.as_str()) {
                Ok(())
            } else {
                not_allowed(&name)
            }
        }
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} | Set::SetTransaction { .. } => Ok(()),
        other => not_allowed(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn verdict(sql: &str) -> Result<(), Refused> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        check(&statements[0])
    }

    #[test]
    fn reads_pass_and_writes_and_settings_are_refused_by_name() {
        for ok in ["SELECT 1", "EXPLAIN SELECT 1", "SHOW statement_timeout", "BEGIN", "COMMIT", "SET application_name = 'x'", "SET statement_timeout = '5s'", "SET TIME ZONE 'UTC'"] {
            assert_eq!(verdict(ok), Ok(()), "{ok}");
        }
        for (sql, named) in [
            ("CREATE TABLE x (a int)", "CREATE TABLE"),
            ("INSERT INTO a.b.c VALUES (1)", "INSERT"),
            ("DROP TABLE a.b.c", "DROP"),
            ("COPY a TO '/tmp/x.csv'", "COPY"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DELETE FROM a.b.c", "DELETE"),
        ] {
            let refused = verdict(sql).unwrap_err();
            assert_eq!(refused.code, READ_ONLY, "{sql}");
            assert!(refused.message.starts_with(named) && refused.message.contains("read-only"), "{sql}: {}", refused.message);
        }
        let external = unparsed("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'", "parse error");
        assert!(external.code == READ_ONLY && external.message.starts_with("CREATE EXTERNAL TABLE: the served lake is read-only"), "{}", external.message);
        assert_eq!(unparsed("SELEC 1", "parse error").code, "42601");
        let set = verdict("SET datafusion.execution.target_partitions = 1").unwrap_err();
        assert_eq!(set.code, NOT_ALLOWED);
        assert!(set.message.contains("SET datafusion.execution.target_partitions is not allowed"), "{}", set.message);
    }
}
