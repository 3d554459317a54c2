//! Every input a fuzzer once crashed on (`fuzz/regressions/<target>/`), through
//! the same function its fuzz target calls: what was fixed stays fixed.

use std::path::PathBuf;

use sluice_gate::statement::{admit, check, unparsed, StatementLimits};
use sluice_gate::token::Verifier;

/// `fuzz/regressions/<target>/`, found where cargo runs the test from (a test
/// binary built in another clone sharing the target directory carries that
/// clone's path).
fn regressions(target: &str) -> PathBuf {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dir = PathBuf::from(crate_dir).join("fuzz/regressions").join(target);
    assert!(dir.is_dir(), "no regressions at {}", dir.display());
    dir
}

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = regressions(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().filter(|p| p.is_file()).map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

#[test]
fn statements_that_once_crashed_are_admitted_or_refused() {
    for input in inputs("statement") {
        let Ok(sql) = std::str::from_utf8(&input) else { continue };
        if admit(sql, &StatementLimits::default()).is_err() {
            continue;
        }
        match sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql) {
            Ok(statements) => statements.iter().for_each(|s| drop(check(s))),
            Err(e) => assert!(!unparsed(sql, e).message.is_empty()),
        }
    }
}

/// Statements the fuzzer found slow to parse (`slow-*`: time that doubles with each
/// nested call, subscript or dot) must be refused before the real parse.
#[test]
fn statements_that_were_slow_to_parse_are_refused_before_parsing() {
    let dir = regressions("statement");
    let slow: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("slow-")).collect();
    assert!(!slow.is_empty(), "no slow-* inputs in {}", dir.display());
    for entry in slow {
        let sql = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).to_string();
        let refused = admit(&sql, &StatementLimits::default()).expect_err("a slow statement is admitted");
        assert!(refused.message.contains("the parser would take more than"), "{}", refused.message);
    }
}

#[test]
fn tokens_and_parameters_that_once_crashed_are_refused() {
    let verifier = Verifier::hs256(b"fuzzing secret of enough bytes").unwrap();
    for input in inputs("token") {
        let _ = verifier.verify(&String::from_utf8_lossy(&input));
    }
    for input in inputs("params") {
        let query = String::from_utf8_lossy(&input);
        let _ = (sluice_gate::params::analytics(&query), sluice_gate::params::dashboard(&query));
    }
}
