//! How much work the parser does over a statement, bounded.
//!
//! sqlparser (0.62) reads some constructs by trying one reading and, when that
//! fails, another: a call's arguments, `name[` (a subscript or an array type),
//! the part after each `.` of a dotted name. Nested, the tries multiply, so a
//! short statement can take minutes: the statement fuzzer found 16 nested calls
//! (80 ms), calls mixed with subscripts (14 s), then a dotted name before an
//! unclosed `[` (a minute at 22 dots), one construct after another. Rather than
//! bound each construct from the tokens, [`steps_within`] bounds the work itself:
//! a trial parse with PostgreSQL's dialect, wrapped to count every expression the
//! parser starts and to fail each one once the budget is spent. The failure is
//! the one error the parser passes through every retry, so the trial ends soon
//! after the budget does.

use std::any::TypeId;
use std::cell::Cell;

use sqlparser::ast::Expr;
use sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// Parses `tokens` as the server's parser would, and returns the steps it took,
/// or `None` once it has taken more than `budget`. A statement that does not
/// parse still returns its steps: the real parse names its error.
pub fn steps_within(tokens: Vec<Token>, budget: u64) -> Option<u64> {
    let dialect = Counting { steps: Cell::new(0), budget };
    let _ = Parser::new(&dialect).with_tokens(tokens).parse_statements();
    let steps = dialect.steps.get();
    (steps <= budget).then_some(steps)
}

const POSTGRES: PostgreSqlDialect = PostgreSqlDialect {};

/// PostgreSQL's dialect, counting steps. It answers every question the parser
/// asks of a dialect as PostgreSQL's does: the methods below are all those that
/// `PostgreSqlDialect` overrides (the rest are the trait's defaults for both),
/// and [`Dialect::dialect`] names PostgreSQL, which the parser's own
/// `dialect_of!` checks read. `the_counting_dialect_parses_as_postgres` checks it.
#[derive(Debug)]
struct Counting {
    steps: Cell<u64>,
    budget: u64,
}

impl Counting {
    /// Counts a step; `Some(error)` once the budget is spent.
    fn step<T>(&self) -> Option<Result<T, ParserError>> {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        (steps > self.budget).then_some(Err(ParserError::RecursionLimitExceeded))
    }
}

macro_rules! as_postgres {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { POSTGRES.$name() })*
    };
}

impl Dialect for Counting {
    fn dialect(&self) -> TypeId {
        POSTGRES.dialect()
    }

    /// Called at the start of every expression, and of every retry of one.
    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        self.step().or_else(|| POSTGRES.parse_prefix(parser))
    }

    /// Called after every operand, to look for an operator.
    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.step().or_else(|| POSTGRES.get_next_precedence(parser))
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        POSTGRES.identifier_quote_style(identifier)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        POSTGRES.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        POSTGRES.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        POSTGRES.is_identifier_part(ch)
    }
    fn is_reserved_for_identifier(&self, kw: Keyword) -> bool {
        POSTGRES.is_reserved_for_identifier(kw)
    }
    fn is_custom_operator_part(&self, ch: char) -> bool {
        POSTGRES.is_custom_operator_part(ch)
    }
    fn prec_value(&self, prec: Precedence) -> u8 {
        POSTGRES.prec_value(prec)
    }

    as_postgres!(
        supports_unicode_string_literal,
        supports_filter_during_aggregation,
        supports_group_by_expr,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_listen_notify,
        supports_factorial_operator,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_colon_operator,
        supports_named_fn_args_with_expr_name,
        supports_empty_projections,
        supports_nested_comments,
        supports_string_escape_constant,
        supports_numeric_literal_underscores,
        supports_array_typedef_with_brackets,
        supports_geometric_types,
        supports_set_names,
        supports_alter_column_type_using,
        supports_notnull_operator,
        supports_interval_options,
        supports_insert_table_alias,
        supports_create_table_like_parenthesized,
        supports_select_wildcard_with_alias,
        supports_comma_separated_trim,
        supports_xml_expressions,
        supports_comment_optimizer_hint,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::tokenizer::Tokenizer;

    fn tokens(sql: &str) -> Vec<Token> {
        Tokenizer::new(&POSTGRES, sql).tokenize().unwrap()
    }

    fn steps(sql: &str) -> u64 {
        steps_within(tokens(sql), u64::MAX).unwrap()
    }

    #[test]
    fn the_counting_dialect_parses_as_postgres() {
        let statements = [
            "SELECT window_start, service AS series, max(p95_duration_ms) AS p95_ms FROM monitoring.api_performance.request_response_times \
             WHERE window_start >= (SELECT max(window_start) FROM monitoring.api_performance.request_response_times) - INTERVAL '1 hour' \
             GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT a.b[1][2], ARRAY[1, 2]::int[], x ->> 'k', y @> '{}'::jsonb, z ~ '^a', 5 !, 1 << 2 FROM t WHERE c NOTNULL",
            "SELECT count(*) FILTER (WHERE x > 1), f(a => 1), g(b := 2), E'\\n', U&'d\\0061t', 1_000 FROM t",
            "SELECT EXTRACT('epoch' FROM ts), trim(both 'x', 'y'), t.* AS everything FROM s.t /* a /* nested */ comment */",
            "EXPLAIN (ANALYZE, VERBOSE) SELECT 1; SET TIME ZONE 'UTC'; SHOW search_path; SET NAMES 'UTF8'",
            "SELECT 'unterminated",
            "SELECT FROM WHERE",
        ];
        for sql in statements {
            let ours = Parser::new(&Counting { steps: Cell::new(0), budget: u64::MAX }).try_with_sql(sql).and_then(|mut p| p.parse_statements());
            let postgres = Parser::parse_sql(&POSTGRES, sql);
            assert_eq!(format!("{ours:?}"), format!("{postgres:?}"), "{sql}");
        }
    }

    #[test]
    fn a_statement_the_parser_retries_exponentially_runs_out_of_budget() {
        // Each level doubles the work: the steps of 8 levels are many times 4's.
        let calls = |n: usize| format!("SELECT {}1", "a.b(".repeat(n));
        assert!(steps(&calls(8)) > 8 * steps(&calls(4)), "{} vs {}", steps(&calls(8)), steps(&calls(4)));
        let dots = |n: usize| format!("SELECT {}b[1", "a.".repeat(n));
        assert!(steps(&dots(12)) > 8 * steps(&dots(6)), "{} vs {}", steps(&dots(12)), steps(&dots(6)));
        // 40 dots would take hours; the budget ends the trial in its first steps.
        assert_eq!(steps_within(tokens(&dots(40)), 10_000), None);
        // A long but flat statement takes steps in proportion to its length.
        let flat = |n: usize| format!("SELECT {} FROM t", (0..n).map(|i| format!("a{i} + 1")).collect::<Vec<_>>().join(", "));
        assert!(steps(&flat(2000)) < 11 * steps(&flat(200)), "{} vs {}", steps(&flat(2000)), steps(&flat(200)));
    }
}
