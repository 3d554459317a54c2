//! `sluice validate` and `sluice explain`: what the SQL files will do, without running.

use std::path::Path;

use super::Definitions;
use crate::error::{Error, Result};
use crate::plan::{load_sql_dir, plan, Shape, SqlFile, StreamingQuery};
use crate::runtime::input_tables;
use crate::schema::SchemaRegistry;
use crate::serve::Policy;
use crate::sink::{dead_letter_schema, late_event_schema, DEAD_LETTERS, LATE_EVENTS};
use datafusion::arrow::datatypes::SchemaRef;
use crate::sink::TableLayout;
use crate::udf::Udfs;

/// Loads every schema and plans every SQL file; reports every problem, not just the first.
pub async fn validate(definitions: &Definitions) -> Result<()> {
    let registry = SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let files = load_sql_dir(&definitions.sql_dir()?)?;
    let inputs = input_tables(&registry);
    let udf_files = definitions.udf_files()?;
    let udfs = Udfs::declared(&udf_files);
    let mut failed = 0;
    // Every table the pipeline writes, with its columns, for the policy check.
    let mut tables: Vec<(String, SchemaRef)> = vec![
        (DEAD_LETTERS.replace('/', "."), dead_letter_schema()),
        (LATE_EVENTS.replace('/', "."), late_event_schema()),
    ];
    tables.extend(inputs.iter().filter_map(|i| Some((i.mirror.as_ref()?.sql_name(), i.schema.clone()))));
    for file in &files {
        match plan(file, &inputs, &udfs).await {
            Ok(query) => tables.push((query.table.sql_name(), query.output_schema.clone())),
            Err(e) => {
                eprintln!("error: {}", e.to_string().replace('\n', " "));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Error::Config(format!("{failed} of {} SQL files cannot run", files.len())));
    }
    let policy = definitions.policy()?;
    let problems = policy_problems(&policy, &tables);
    for problem in &problems {
        eprintln!("error: policy: {problem}");
    }
    if !problems.is_empty() {
        return Err(Error::Config(format!("the row-level security policy has {} problems", problems.len())));
    }
    // The tests beside the SQL files: each file parses, and tests a table the pipeline writes.
    let data_tests = crate::data_tests::load(&definitions.sql_dir()?)?;
    let untested: std::collections::BTreeSet<String> =
        data_tests.iter().map(|t| t.table.sql_name()).filter(|t| !tables.iter().any(|(written, _)| written == t)).collect();
    for table in &untested {
        eprintln!("error: data tests: `{table}` is not a table the pipeline writes (no SQL file of that path)");
    }
    if !untested.is_empty() {
        return Err(Error::Config(format!("{} tests files are for tables the pipeline does not write", untested.len())));
    }
    let fixtures = crate::fixtures::load(&files)?;
    super::emit(&format!(
        "{} topic schemas, {} SQL files, {} UDFs and the policy of {} tables: all valid; {} fixtures and {} data tests declared (sluice test)\n",
        registry.topics().count(),
        files.len(),
        udf_files.len(),
        tables.len(),
        fixtures.len(),
        data_tests.len()
    ))
}

/// Tables the policy names that the pipeline does not write, and ties that do
/// not fit a table's columns.
fn policy_problems(policy: &Policy, tables: &[(String, SchemaRef)]) -> Vec<String> {
    let mut problems: Vec<String> = policy
        .tables()
        .filter(|named| !tables.iter().any(|(t, _)| t == named))
        .map(|named| format!("`{named}` is not a table the pipeline writes"))
        .collect();
    problems.extend(tables.iter().filter_map(|(table, schema)| policy.ties(table, schema).err()));
    problems
}

/// Prints the streaming plan of one SQL file, named by its path or its table.
pub async fn explain(which: &str, definitions: &Definitions) -> Result<()> {
    let registry = SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let files = load_sql_dir(&definitions.sql_dir()?)?;
    let file = find(&files, which)?;
    let udfs = Udfs::declared(&definitions.udf_files()?);
    let query = plan(file, &input_tables(&registry), &udfs).await?;
    super::emit(&describe(&query, &registry, &udfs))
}

/// A SQL file by its path (as given or canonical) or by its table (`a/b/c` or `a.b.c`).
fn find<'a>(files: &'a [SqlFile], which: &str) -> Result<&'a SqlFile> {
    let canonical = Path::new(which).canonicalize().ok();
    files
        .iter()
        .find(|f| {
            f.table.as_str() == which
                || f.table.sql_name() == which
                || canonical.is_some() && f.path.canonicalize().ok() == canonical
        })
        .ok_or_else(|| Error::Config(format!("`{which}` is neither a SQL file of the sql directory nor one of its tables")))
}

fn describe(query: &StreamingQuery, registry: &SchemaRegistry, udfs: &Udfs) -> String {
    let mut out = format!("table    {} (in SQL: {})\nfile     {}\n", query.table, query.table.sql_name(), query.path.display());
    out.push_str(&format!("plan     fingerprint {} (unchanged by comments and spacing)\n", query.fingerprint));
    for topic in query.topics() {
        let detail = match registry.get(topic) {
            Some(t) => format!("{} partitions, out-of-orderness {:?}", t.partitions, t.out_of_orderness),
            None => "the pipeline's own batch metrics, by processing time".to_string(),
        };
        out.push_str(&format!("source   {topic} ({detail})\n"));
    }
    match &query.shape {
        Shape::Stateless { .. } => {
            out.push_str("window   none: stateless\nstate    none\nemit     every result row as its batch is read (append)\n");
        }
        Shape::OverMirrors { .. } => {
            for read in &query.mirrors {
                out.push_str(&format!("source   {} (the current rows of {}'s mirror)\n", read.table.sql_name(), read.topic));
            }
            out.push_str(
                "window   none: a continuously updated table\nstate    none besides the mirrors\n\
                 emit     at each commit after a change to a mirror it reads, the whole result, replacing the table's rows\n",
            );
        }
        Shape::Current { spec, .. } => {
            let keys: Vec<String> = spec.key_schema.fields().iter().map(|f| f.name().clone()).collect();
            out.push_str("window   none: the current state per key, in event-time order (no event is late)\n");
            out.push_str(&format!("state    per key ({}), the input rows since its last removal; aggregates:\n", keys.join(", ")));
            for aggregate in &spec.aggregates {
                out.push_str(&format!("           {}\n", aggregate.function.name()));
            }
            let removal = match &spec.removed_when {
                Some(condition) => format!("a row for which `{condition}` holds removes its key (removals kept a day)"),
                None => "rows are never removed".to_string(),
            };
            out.push_str(&format!("emit     at each commit after a key changed, one row per live key, replacing the table's rows; {removal}\n"));
        }
        Shape::Windowed { window, .. } => {
            let keys: Vec<String> = window.key_schema.fields().iter().map(|f| f.name().clone()).collect();
            let aggregates: Vec<&str> = window.aggregates.iter().map(|a| a.function.name()).collect();
            if let Some(gap) = window.session_gap {
                out.push_str(&format!("window   session: per key, events less than {} apart, on the event time `ts`\n", humanize(gap)));
            } else if window.slide == window.size {
                out.push_str(&format!("window   tumble {} on the event time `ts`\n", humanize(window.size)));
            } else {
                out.push_str(&format!(
                    "window   hop: {} long, one every {}, on the event time `ts`; state kept per {} pane\n",
                    humanize(window.size),
                    humanize(window.slide),
                    humanize(window.slide)
                ));
            }
            let groups = if keys.is_empty() { "one group".to_string() } else { format!("a group per ({})", keys.join(", ")) };
            if window.session_gap.is_some() {
                out.push_str(&format!("state    per key ({}), the input rows of its open sessions; at the end, the aggregates:\n", keys.join(", ")));
            } else {
                let unit = if window.slide == window.size { "window" } else { "pane" };
                out.push_str(&format!("state    per open {unit}, {groups}, the accumulators of:\n"));
            }
            for aggregate in aggregates {
                out.push_str(&format!("           {aggregate}\n"));
            }
            for joined in &query.mirrors {
                out.push_str(&format!(
                    "join     {} as of each window's end (temporal); windows also wait for {}'s watermark\n",
                    joined.table.sql_name(),
                    joined.topic
                ));
            }
            match window.corrections {
                None => out.push_str(
                    "emit     a window's rows once the watermark passes its end (append); \
                     events for an emitted window go to late_events\n",
                ),
                Some(kept_for) => out.push_str(&format!(
                    "emit     a window's rows once the watermark passes its end; a late event up to {} after the end \
                     updates the window, whose rows are then replaced in place (state kept that long); \
                     later ones go to late_events\n",
                    humanize(kept_for)
                )),
            }
        }
    }
    for name in &query.udfs {
        if let Some((signature, source)) = udfs.get(name) {
            out.push_str(&format!("udf      {signature} ({}, {})\n", signature.kind.label(), source.display()));
        }
    }
    let table = query.table.sql_name();
    for chart in crate::serve::dashboard::charts_reading(&table) {
        out.push_str(&format!("read by  the dashboard's chart \"{chart}\"\n"));
    }
    for answer in crate::serve::analytics::answers_reading(&table) {
        out.push_str(&format!("read by  the analytics API: {answer}\n"));
    }
    let layout = TableLayout::for_result(&query.output_schema, query.window_column());
    out.push_str("columns\n");
    for f in layout.schema.fields() {
        let partition = if layout.partition_columns.contains(f.name()) { "  (partition column)" } else { "" };
        out.push_str(&format!("  {:<28} {}{partition}\n", f.name(), f.data_type()));
    }
    out
}

/// A window length in µs as people write it.
fn humanize(micros: i64) -> String {
    let seconds = micros / 1_000_000;
    match seconds {
        s if s % 86_400 == 0 => format!("{} day(s)", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hour(s)", s / 3_600),
        s if s % 60 == 0 => format!("{} minute(s)", s / 60),
        s => format!("{s} second(s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn validate_names_every_file_that_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let sql = dir.path().join("a/b");
        std::fs::create_dir_all(&sql).unwrap();
        std::fs::write(sql.join("good.sql"), "SELECT request_id FROM gateway.requests").unwrap();
        std::fs::write(sql.join("join.sql"), "SELECT * FROM gateway.requests r JOIN interactions i ON r.ts = i.ts").unwrap();
        std::fs::write(sql.join("typo.sql"), "SELEC 1").unwrap();
        let definitions = Definitions {
            schemas: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")),
            sql: Some(dir.path().to_path_buf()),
            udfs: None,
            policy: None,
        };
        let err = validate(&definitions).await.unwrap_err().to_string();
        assert!(err.contains("2 of 3 SQL files cannot run"), "{err}");
        let err = explain("a.b.nope", &definitions).await.unwrap_err().to_string();
        assert!(err.contains("`a.b.nope` is neither"), "{err}");

        // Tests files: one that does not parse, one for a table no SQL file writes.
        std::fs::remove_file(sql.join("join.sql")).unwrap();
        std::fs::remove_file(sql.join("typo.sql")).unwrap();
        std::fs::write(sql.join("good.tests.toml"), "not_nul = [\"request_id\"]").unwrap();
        let err = validate(&definitions).await.unwrap_err().to_string();
        assert!(err.contains("good.tests.toml") && err.contains("not_nul"), "{err}");
        std::fs::write(sql.join("good.tests.toml"), "not_null = [\"request_id\"]").unwrap();
        std::fs::write(sql.join("gone.tests.toml"), "not_null = [\"request_id\"]").unwrap();
        let err = validate(&definitions).await.unwrap_err().to_string();
        assert!(err.contains("1 tests files are for tables the pipeline does not write"), "{err}");
        std::fs::remove_file(sql.join("gone.tests.toml")).unwrap();
        assert!(validate(&definitions).await.is_ok());
    }

    #[tokio::test]
    async fn explain_names_the_udfs_a_query_calls_without_building_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("twice.rs"), "#[udf]\nfn twice(x: i32) -> i32 { x * 2 }\n").unwrap();
        let udfs = Udfs::declared(&crate::udf::load_dir(dir.path()).unwrap());
        let file = SqlFile {
            path: "sql/a/b/c.sql".into(),
            table: crate::catalog::TablePath::new("a/b/c").unwrap(),
            sql: "SELECT request_id, twice(status) AS doubled FROM gateway.requests".into(),
        };
        let registry = SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap();
        let query = plan(&file, &input_tables(&registry), &udfs).await.unwrap();
        let text = describe(&query, &registry, &udfs);
        assert!(text.contains("udf      twice(Int32) -> Int32 (scalar, "), "{text}");

        std::fs::write(dir.path().join("round.rs"), "#[udf]\nfn round(x: f64) -> f64 { x }\n").unwrap();
        let err = crate::udf::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("round.rs") && err.contains("`round` is a built-in SQL function"), "{err}");
    }
}
