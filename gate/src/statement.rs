//! Whether a statement may run at all, decided before it is planned.
//!
//! 1. [`admit`] bounds its size, its nesting and its literals from the raw text.
//!    Everything after parsing (display, cloning, dropping, planning, optimising)
//!    walks the syntax tree recursively, so a tree thousands of levels deep can
//!    overflow a thread's stack and abort the whole server. A chain such as
//!    `1+1+…+1` is parsed in a loop but makes a tree as deep as it is long, so the
//!    parser's own recursion limit does not catch it; the tokens do, cheaply.
//!    Last, a trial parse bounds the parser's work, which some constructs make
//!    exponential in their nesting ([`effort`]).
//! 2. [`check`] is the read-only allow-list: queries, `EXPLAIN`, `SHOW`,
//!    transactions and cursors (which only read), and `SET` of a short list of
//!    session settings. Everything else is refused by name.

use sqlparser::ast::{Set, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::effort;

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
/// SQLSTATE 54001, statement_too_complex.
pub const TOO_COMPLEX: &str = "54001";

/// How big a statement may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLimits {
    /// Bytes of SQL text.
    pub max_bytes: usize,
    /// Nesting, as estimated by [`nesting`]: an upper bound of the syntax tree's depth.
    pub max_depth: usize,
    /// Bytes of one string literal (or bound parameter). A literal is copied into
    /// every row it is combined with, so this bounds what one batch can grow to.
    pub max_literal_bytes: usize,
    /// The parser's work: a statement may take this many steps (see
    /// [`effort`](crate::effort)), and 4 more per token. A flat statement takes
    /// about 1.3 per token; the base admits 10 nested calls (4,100 steps, 2 ms),
    /// deeper than people and tools nest, and refuses 11 (8,200). Every admitted
    /// statement is parsed twice, and the statement fuzzer replays its corpus at
    /// every run: a bigger base slows both.
    pub parse_steps: u64,
}

impl Default for StatementLimits {
    fn default() -> Self {
        StatementLimits { max_bytes: 1 << 20, max_depth: 1000, max_literal_bytes: 16 << 10, parse_steps: 5_000 }
    }
}

fn too_complex(what: String) -> Refused {
    Refused { code: TOO_COMPLEX, message: format!("statement too complex: {what}") }
}

/// Refuses a statement too big, too deeply nested, with too long a literal or
/// too much work for the parser to plan safely, naming the limit. Linear in the text.
pub fn admit(sql: &str, limits: &StatementLimits) -> Result<(), Refused> {
    if sql.len() > limits.max_bytes {
        return Err(too_complex(format!("{} bytes, more than the limit of {} bytes", sql.len(), limits.max_bytes)));
    }
    // Text the tokenizer cannot read is left to the parser, which names the error.
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else { return Ok(()) };
    if let Some(longest) = tokens.iter().filter_map(literal_len).max() {
        if longest > limits.max_literal_bytes {
            return Err(too_complex(format!("a literal of {longest} bytes, more than the limit of {} bytes", limits.max_literal_bytes)));
        }
    }
    let depth = nesting(&tokens);
    if depth > limits.max_depth {
        return Err(too_complex(format!(
            "nesting of about {depth} levels (operators chained, joins, unions, parentheses), more than the limit of {}",
            limits.max_depth
        )));
    }
    let words = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    let budget = limits.parse_steps + 4 * words as u64;
    if effort::steps_within(tokens, budget).is_none() {
        return Err(too_complex(format!(
            "the parser would take more than {budget} steps to read it (calls, subscripts or dotted names nested in each other); nest fewer"
        )));
    }
    Ok(())
}

fn literal_len(token: &Token) -> Option<usize> {
    match token {
        Token::SingleQuotedString(s)
        | Token::DoubleQuotedString(s)
        | Token::TripleSingleQuotedString(s)
        | Token::TripleDoubleQuotedString(s)
        | Token::SingleQuotedByteStringLiteral(s)
        | Token::DoubleQuotedByteStringLiteral(s)
        | Token::TripleSingleQuotedByteStringLiteral(s)
        | Token::TripleDoubleQuotedByteStringLiteral(s)
        | Token::SingleQuotedRawStringLiteral(s)
        | Token::DoubleQuotedRawStringLiteral(s)
        | Token::TripleSingleQuotedRawStringLiteral(s)
        | Token::TripleDoubleQuotedRawStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::HexStringLiteral(s)
        | Token::Number(s, _) => Some(s.len()),
        Token::DollarQuotedString(s) => Some(s.value.len()),
        _ => None,
    }
}

/// One bracket level of [`nesting`]'s walk.
#[derive(Default)]
struct Level {
    /// Depth of the enclosing levels.
    base: usize,
    /// Operators since the last clause keyword or list comma: a chain of them
    /// (`a + b + c`, `x AND y AND z`) nests one level each.
    expr: usize,
    /// Joins, set operations and `FROM a, b`: also left-deep trees.
    chain: usize,
    /// In a FROM list, where a comma is a join.
    from: bool,
}

impl Level {
    fn depth(&self) -> usize {
        self.base + self.expr + self.chain
    }
}

/// An upper bound of the depth of the syntax tree (and of the plans made from it)
/// that `tokens` parse into. Every token that can add a level counts one (an
/// operator, a keyword, a closed bracket, a `.`); a comma between list items and
/// a clause keyword start a sibling instead, except in a FROM list and between
/// joins and set operations, which build left-deep trees; brackets and `CASE …
/// END` open a level of their own.
pub fn nesting(tokens: &[Token]) -> usize {
    let mut stack = vec![Level::default()];
    let mut deepest = 0;
    for token in tokens {
        let Some(level) = stack.last_mut() else { break };
        match token {
            Token::Whitespace(_) | Token::EOF | Token::Placeholder(_) => continue,
            Token::SemiColon => stack = vec![Level::default()],
            Token::LParen | Token::LBracket | Token::LBrace => open(&mut stack),
            Token::RParen | Token::RBracket | Token::RBrace => close(&mut stack),
            Token::Comma if level.from => level.chain += 1,
            Token::Comma => level.expr = 0,
            Token::Word(word) => match word.keyword {
                Keyword::NoKeyword => {}
                Keyword::CASE => open(&mut stack),
                Keyword::END => close(&mut stack),
                Keyword::JOIN | Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS => level.chain += 1,
                Keyword::FROM => {
                    level.expr = 0;
                    level.from = true;
                }
                Keyword::ON | Keyword::USING => level.expr = 0,
                Keyword::SELECT
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH
                | Keyword::WINDOW
                | Keyword::QUALIFY
                | Keyword::VALUES
                | Keyword::PARTITION
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE => {
                    level.expr = 0;
                    level.from = false;
                }
                _ => level.expr += 1,
            },
            _ if literal_len(token).is_some() => {}
            _ => level.expr += 1,
        }
        if let Some(level) = stack.last() {
            deepest = deepest.max(level.depth());
        }
    }
    deepest
}

fn open(stack: &mut Vec<Level>) {
    let base = stack.last().map_or(0, |l| l.depth() + 1);
    stack.push(Level { base, ..Level::default() });
}

/// Closes a level; the bracketed term is one more operand of the level around it.
fn close(stack: &mut Vec<Level>) {
    if stack.len() > 1 {
        stack.pop();
    }
    if let Some(level) = stack.last_mut() {
        level.expr += 1;
    }
}

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

/// `what` refused because the lake is served read-only.
fn writes(what: &str) -> Refused {
    Refused { code: READ_ONLY, message: format!("{what}: the served lake is read-only (queries, EXPLAIN, SHOW and SET of session settings only)") }
}

/// Whether a parsed statement only reads: the allow-list.
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
    use sqlparser::parser::Parser;

    fn verdict(sql: &str) -> Result<(), Refused> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        check(&statements[0])
    }

    fn depth(sql: &str) -> usize {
        nesting(&Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().unwrap())
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

    /// The estimate is never below the real depth of what chains build, and stays
    /// small for wide but shallow statements (lists, many columns, many CASE arms).
    #[test]
    fn nesting_counts_chains_and_not_lists() {
        let chain = |op: &str, n: usize| format!("SELECT 1{}", format!(" {op} 1").repeat(n));
        for op in ["+", "*", "||", "AND", "OR", "=", "::int ::", "IS NOT NULL AND x"] {
            assert!(depth(&chain(op, 3000)) >= 3000, "{op}");
        }
        let ors = format!("SELECT * FROM t WHERE {}", (0..2000).map(|i| format!("x = {i}")).collect::<Vec<_>>().join(" OR "));
        assert!(depth(&ors) >= 2000);
        let unions = vec!["SELECT 1"; 2000].join(" UNION ALL ");
        assert!(depth(&unions) >= 1999);
        let joins = format!("SELECT * FROM t0{}", (1..2000).map(|i| format!(" JOIN t{i} ON true")).collect::<String>());
        assert!(depth(&joins) >= 1999);
        let commas = format!("SELECT * FROM {}", (0..2000).map(|i| format!("t{i}")).collect::<Vec<_>>().join(", "));
        assert!(depth(&commas) >= 1999);
        let parens = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert!(depth(&parens) >= 500);
        let cases = format!("SELECT 1{}", " + CASE WHEN true THEN 1 END".repeat(2000));
        assert!(depth(&cases) >= 2000);
        let fields = format!("SELECT s{} FROM t", ".a".repeat(2000));
        assert!(depth(&fields) >= 2000);

        let in_list = format!("SELECT * FROM t WHERE x IN ({})", (0..100_000).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert!(depth(&in_list) < 10, "{}", depth(&in_list));
        let columns = format!("SELECT {} FROM t", (0..5000).map(|i| format!("a{i} + 1 AS c{i}")).collect::<Vec<_>>().join(", "));
        assert!(depth(&columns) < 10);
        let arms = format!("SELECT CASE {} END FROM t", (0..5000).map(|i| format!("WHEN x = {i} THEN {i}")).collect::<String>());
        assert!(depth(&arms) < 10);
        let dashboard = "SELECT window_start, service AS series, max(p95_duration_ms) AS p95_ms FROM monitoring.api_performance.request_response_times \
                         WHERE window_start >= (SELECT max(window_start) FROM monitoring.api_performance.request_response_times) - INTERVAL '1 hour' \
                         GROUP BY 1, 2 ORDER BY 1, 2";
        assert!(depth(dashboard) < 20, "{}", depth(dashboard));
    }

    #[test]
    fn admission_names_the_limit_it_exceeds() {
        let limits = StatementLimits { max_bytes: 1000, max_depth: 50, max_literal_bytes: 100, parse_steps: 5_000 };
        let big = admit(&format!("SELECT '{}'", "x".repeat(2000)), &limits).unwrap_err();
        assert_eq!(big.code, TOO_COMPLEX);
        assert!(big.message.contains("more than the limit of 1000 bytes"), "{}", big.message);
        let literal = admit(&format!("SELECT '{}'", "x".repeat(200)), &limits).unwrap_err();
        assert!(literal.message.contains("a literal of 200 bytes, more than the limit of 100 bytes"), "{}", literal.message);
        let deep = admit(&format!("SELECT 1{}", " + 1".repeat(100)), &limits).unwrap_err();
        assert!(deep.message.starts_with("statement too complex: nesting of about") && deep.message.contains("limit of 50"), "{}", deep.message);
        assert_eq!(admit("SELECT 1 + 1", &limits), Ok(()));
        assert_eq!(admit("SELECT 'unterminated", &limits), Ok(()), "left to the parser");
        let nested = admit(&format!("SELECT {}x{} FROM t", "f(".repeat(14), ")".repeat(14)), &limits).unwrap_err();
        assert!(nested.message.starts_with("statement too complex: the parser would take more than 5"), "{}", nested.message);
    }

    #[test]
    fn statements_the_parser_would_retry_exponentially_are_refused() {
        let limits = StatementLimits::default();
        let calls = |n: usize| format!("SELECT {}x{} FROM t", "coalesce(".repeat(n), ")".repeat(n));
        assert_eq!(admit(&calls(10), &limits), Ok(()), "as deep as people and tools nest, and more");
        let nested = admit(&calls(11), &limits).unwrap_err();
        assert_eq!(nested.code, TOO_COMPLEX);
        assert!(nested.message.contains("(calls, subscripts or dotted names nested in each other)"), "{}", nested.message);
        // As the statement fuzzer sent them: unclosed calls, calls in subscripts, a
        // dotted name before an unclosed subscript (a minute to parse at 22 dots).
        assert!(admit(&format!("SELECT {}1", "f(".repeat(40)), &limits).is_err());
        assert!(admit(&format!("SELECT {}1", "a.b[c(".repeat(10)), &limits).is_err());
        assert!(admit(&format!("SELECT {}b[1", "a.".repeat(30)), &limits).is_err());
        assert_eq!(admit(&format!("SELECT {}b[1]", "a.".repeat(30)), &limits), Ok(()), "a long dotted name is read once");
        // A big flat statement is not: its budget grows with its tokens.
        let columns = format!("SELECT {} FROM t", (0..20_000).map(|i| format!("coalesce(a{i}, 0) + 1 AS c{i}")).collect::<Vec<_>>().join(", "));
        assert_eq!(admit(&columns, &limits), Ok(()));
        // Deep but read once: brackets, chains, unions, long IN lists (the hostile test's near-limit statements).
        for deep in [
            format!("SELECT {}1{}", "(".repeat(45), ")".repeat(45)),
            format!("SELECT 1{}", "+1".repeat(990)),
            vec!["SELECT 1 AS x"; 900].join(" UNION ALL "),
            format!("SELECT count(*) FROM t WHERE route IN ({})", (0..100_000).map(|i| format!("'r{i}'")).collect::<Vec<_>>().join(",")),
        ] {
            assert_eq!(admit(&deep, &limits), Ok(()), "{}", &deep[..60]);
        }
    }

}
