//! Any text a client may send as a statement: admission never panics, and what it
//! admits parses, passes or fails the allow-list, and drops, without overflowing
//! the stack (the server's threads have at least this fuzzer's 8 MiB).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_gate::statement::{admit, check, unparsed, StatementLimits};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let limits = StatementLimits::default();
    if admit(sql, &limits).is_err() {
        return;
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => {
            for statement in &statements {
                let _ = check(statement);
                let _ = statement.to_string();
            }
        }
        Err(e) => {
            let refused = unparsed(sql, e);
            assert!(!refused.message.is_empty());
        }
    }
});
