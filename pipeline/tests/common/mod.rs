//! Helpers shared by the end-to-end tests: reading a Delta table back through
//! deltalake's own reader, a plain value model to compare against, percentiles,
//! RFC 3339 parsing, and a report that collects differences per table.
//!
//! Nothing here uses the `sluice` crate: the expectation must be independent of
//! the engine.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};

pub const MINUTE_US: i64 = 60_000_000;
pub const DAY_US: i64 = 86_400_000_000;

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// One cell, as the test models it. Integers of every width read back as `I`,
/// timestamps as microseconds since the epoch (UTC), dates as days since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    S(String),
    I(i64),
    F(f64),
    B(bool),
    Ts(i64),
    D(i32),
}

impl V {
    pub fn is_null(&self) -> bool {
        matches!(self, V::Null)
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            V::S(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            V::I(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            V::F(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            V::B(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_ts(&self) -> Option<i64> {
        match self {
            V::Ts(t) => Some(*t),
            _ => None,
        }
    }
}

impl fmt::Display for V {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V::Null => write!(f, "null"),
            V::S(s) => write!(f, "{:?}", short(s, 160)),
            V::I(i) => write!(f, "{i}"),
            V::F(x) => write!(f, "{x:?}"),
            V::B(b) => write!(f, "{b}"),
            V::Ts(t) => write!(f, "{}", fmt_us(*t)),
            V::D(d) => write!(f, "{}", fmt_date(*d)),
        }
    }
}

/// A key component: only strings, nulls and integers (timestamps) are keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum K {
    Null,
    I(i64),
    S(String),
}

impl K {
    pub fn opt(s: Option<&str>) -> K {
        match s {
            Some(s) => K::S(s.to_string()),
            None => K::Null,
        }
    }
}

impl fmt::Display for K {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            K::Null => write!(f, "null"),
            K::I(i) => write!(f, "{i}"),
            K::S(s) => write!(f, "{s:?}"),
        }
    }
}

pub fn key_of(v: &V) -> Option<K> {
    match v {
        V::Null => Some(K::Null),
        V::S(s) => Some(K::S(s.clone())),
        V::I(i) | V::Ts(i) => Some(K::I(*i)),
        V::D(d) => Some(K::I(*d as i64)),
        V::F(_) | V::B(_) => None,
    }
}

pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// `2026-03-01T09:15:02.125000Z` (always six fractional digits), or the raw number
/// when it is out of chrono's range.
pub fn fmt_us(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(dt) => format!("{}", dt.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
        None => format!("{us}µs"),
    }
}

pub fn fmt_date(days: i32) -> String {
    fmt_us(days as i64 * DAY_US)[..10].to_string()
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
        _ => 0,
    }
}

/// Parses an RFC 3339 timestamp as the contract allows it: `YYYY-MM-DD`, `T` or `t`,
/// `HH:MM:SS`, an optional `.` with 1 to 9 digits, then `Z`, `z` or `±HH:MM`.
/// Returns microseconds since the epoch, UTC, with digits past the sixth truncated.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0i64, |a, d| a * 10 + (d - b'0') as i64))
    }
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = num(&b[0..4])?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let month = num(&b[5..7])?;
    let day = num(&b[8..10])?;
    let hour = num(&b[11..13])?;
    let minute = num(&b[14..16])?;
    let second = num(&b[17..19])?;
    let mut i = 19;
    let mut frac_us = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for k in 0..6 {
            frac_us = frac_us * 10
                + if k < n {
                    (b[start + k] - b'0') as i64
                } else {
                    0
                };
        }
    }
    if i >= b.len() {
        return None;
    }
    let offset_s = match b[i] {
        b'Z' | b'z' => {
            if i + 1 != b.len() {
                return None;
            }
            0
        }
        b'+' | b'-' => {
            if b.len() != i + 6 || b[i + 3] != b':' {
                return None;
            }
            let oh = num(&b[i + 1..i + 3])?;
            let om = num(&b[i + 4..i + 6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if b[i] == b'+' { 1 } else { -1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_s) * 1_000_000 + frac_us)
}

/// Formats `us` as RFC 3339 in local time at `offset_min` minutes east of UTC.
/// `frac` is appended verbatim after a dot when non-empty; the caller makes sure it
/// agrees with the sub-second part of `us` (the first six digits).
pub fn fmt_rfc3339(us: i64, offset_min: i64, frac: &str, sep: char, zulu: char) -> String {
    let local = us + offset_min * 60_000_000;
    let dt = chrono::DateTime::from_timestamp_micros(local).expect("timestamp in range");
    let mut s = format!("{}{}{}", dt.format("%Y-%m-%d"), sep, dt.format("%H:%M:%S"));
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    if offset_min == 0 && zulu != '+' {
        s.push(zulu);
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        let o = offset_min.abs();
        s.push_str(&format!("{sign}{:02}:{:02}", o / 60, o % 60));
    }
    s
}

pub fn window_start(ts: i64, size: i64) -> i64 {
    ts.div_euclid(size) * size
}

// ---------------------------------------------------------------------------
// Statistics and comparisons
// ---------------------------------------------------------------------------

/// 95th percentile with linear interpolation between ranks; `None` for no values.
pub fn p95(values: &[f64]) -> Option<f64> {
    percentile(values, 0.95)
}

pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = q * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// Equal within `rel` relative error (with a tiny absolute floor around zero).
pub fn close(expected: f64, actual: f64, rel: f64) -> bool {
    if expected == actual {
        return true;
    }
    if !expected.is_finite() || !actual.is_finite() {
        return false;
    }
    let diff = (expected - actual).abs();
    diff <= rel * expected.abs().max(actual.abs()) || diff <= 1e-12
}

/// What a cell of an expected row must hold.
#[derive(Debug, Clone)]
pub enum Exp {
    /// An exact integer (counts).
    Int(i64),
    /// A double within 1e-9 relative (sums, averages, rates, shares); `None` = null.
    Float(Option<f64>),
    /// A percentile within 1 % relative; `None` = null (no values).
    Approx(Option<f64>),
    /// An exact boolean.
    Bool(bool),
    /// `value > threshold`, where `value` is only known within 1 %: either answer is
    /// accepted when `value` is that close to the threshold.
    Above { value: f64, threshold: f64 },
    /// An exact cell (strings, timestamps, exact doubles via `V::F`).
    Is(V),
}

impl fmt::Display for Exp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exp::Int(i) => write!(f, "{i}"),
            Exp::Float(Some(x)) => write!(f, "{x:?}"),
            Exp::Float(None) | Exp::Approx(None) => write!(f, "null"),
            Exp::Approx(Some(x)) => write!(f, "{x:?} (±1%)"),
            Exp::Bool(b) => write!(f, "{b}"),
            Exp::Above { value, threshold } => {
                write!(f, "{} ({value:?} > {threshold:?})", value > threshold)
            }
            Exp::Is(v) => write!(f, "{v}"),
        }
    }
}

/// Checks one cell; `Err` says why not.
pub fn check_cell(exp: &Exp, actual: &V) -> Result<(), String> {
    let ok = match (exp, actual) {
        (Exp::Int(e), V::I(a)) => e == a,
        (Exp::Float(None), V::Null) | (Exp::Approx(None), V::Null) => true,
        (Exp::Float(Some(e)), V::F(a)) => close(*e, *a, 1e-9),
        (Exp::Approx(Some(e)), V::F(a)) => close(*e, *a, 0.01),
        (Exp::Bool(e), V::B(a)) => e == a,
        (Exp::Above { value, threshold }, V::B(a)) => {
            close(*threshold, *value, 0.01) || (*value > *threshold) == *a
        }
        (Exp::Is(V::F(e)), V::F(a)) => close(*e, *a, 1e-12),
        (Exp::Is(e), a) => e == a,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {exp}, got {actual}"))
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

const SHOWN_PER_TABLE: usize = 15;

#[derive(Default)]
struct Section {
    count: usize,
    shown: Vec<String>,
}

/// Differences found, grouped by table; the test fails at the end if there is any,
/// listing at most a few per table and the total count.
#[derive(Default)]
pub struct Report {
    sections: BTreeMap<String, Section>,
    notes: Vec<String>,
}

impl Report {
    pub fn diff(&mut self, table: &str, msg: impl Into<String>) {
        let s = self.sections.entry(table.to_string()).or_default();
        s.count += 1;
        if s.shown.len() < SHOWN_PER_TABLE {
            s.shown.push(msg.into());
        }
    }

    pub fn note(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        eprintln!("note: {msg}");
        self.notes.push(msg);
    }

    pub fn count(&self, table: &str) -> usize {
        self.sections.get(table).map_or(0, |s| s.count)
    }

    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    pub fn finish(self) {
        if self.sections.is_empty() {
            return;
        }
        let mut out = String::new();
        let total: usize = self.sections.values().map(|s| s.count).sum();
        out.push_str(&format!(
            "{total} difference(s) in {} table(s) between the lake and the expectation:\n",
            self.sections.len()
        ));
        for (table, s) in &self.sections {
            out.push_str(&format!("\n== {table}: {} difference(s)\n", s.count));
            for m in &s.shown {
                out.push_str(&format!("  - {m}\n"));
            }
            if s.count > s.shown.len() {
                out.push_str(&format!("  … and {} more\n", s.count - s.shown.len()));
            }
        }
        panic!("{out}");
    }
}

// ---------------------------------------------------------------------------
// Reading a Delta table
// ---------------------------------------------------------------------------

/// A Delta table read back through deltalake: its metadata and all its rows.
pub struct TableData {
    pub path: String,
    /// The table schema from the Delta log, as Arrow (the logical schema).
    pub schema: Vec<(String, DataType)>,
    pub partition_columns: Vec<String>,
    /// Columns as the scan returned them, with their Arrow types.
    pub scanned: Vec<(String, DataType)>,
    pub rows: Vec<Vec<V>>,
    index: HashMap<String, usize>,
}

impl TableData {
    pub fn col(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The cell of `row` in column `name`, `None` when the table lacks the column.
    pub fn get<'a>(&'a self, row: &'a [V], name: &str) -> Option<&'a V> {
        self.col(name).map(|i| &row[i])
    }

    pub fn describe_row(&self, row: &[V]) -> String {
        self.scanned
            .iter()
            .zip(row)
            .map(|((n, _), v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Opens `<lake>/<path>` with `deltalake::open_table` and scans every row.
pub async fn read_table(lake: &Path, path: &str) -> Result<TableData, String> {
    let dir = lake.join(path);
    if !dir.join("_delta_log").is_dir() {
        return Err(format!(
            "no Delta table at {} (no _delta_log directory)",
            dir.display()
        ));
    }
    let url = url::Url::from_directory_path(
        dir.canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?,
    )
    .map_err(|_| format!("cannot make a URL of {}", dir.display()))?;
    let mut table = read_table_at(url.as_str(), &HashMap::new()).await?;
    table.path = path.to_string();
    Ok(table)
}

/// A table at a URL (`s3://...`, `az://...`), read with deltalake storage options.
pub async fn read_table_at(
    url: &str,
    options: &HashMap<String, String>,
) -> Result<TableData, String> {
    let path = url.to_string();
    let url = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let table = deltalake::open_table_with_storage_options(url, options.clone())
        .await
        .map_err(|e| format!("deltalake::open_table failed: {e}"))?;
    let state = table.snapshot().map_err(|e| format!("no snapshot: {e}"))?;
    let partition_columns: Vec<String> = state.metadata().partition_columns().to_vec();
    let schema: Vec<(String, DataType)> = state
        .snapshot()
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();

    let (_table, stream) = table
        .scan_table()
        .await
        .map_err(|e| format!("scan failed: {e}"))?;
    let batches = deltalake::operations::collect_sendable_stream(stream)
        .await
        .map_err(|e| format!("reading the scan failed: {e}"))?;

    let mut scanned: Vec<(String, DataType)> = Vec::new();
    let mut rows: Vec<Vec<V>> = Vec::new();
    for batch in &batches {
        let bschema = batch.schema();
        if scanned.is_empty() {
            scanned = bschema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect();
        }
        // Columns are matched by name: a later batch may order them differently.
        let mut cols: Vec<Vec<V>> = Vec::with_capacity(scanned.len());
        for (name, _) in &scanned {
            let idx = bschema
                .index_of(name)
                .map_err(|_| format!("a scanned batch lacks column {name}"))?;
            cols.push(column_values(batch.column(idx)).map_err(|e| format!("column {name}: {e}"))?);
        }
        for r in 0..batch.num_rows() {
            rows.push(cols.iter().map(|c| c[r].clone()).collect());
        }
    }
    if scanned.is_empty() {
        // No batch at all: the scan's columns are the read schema's.
        scanned = schema.clone();
    }
    let index = scanned
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i))
        .collect();
    Ok(TableData {
        path,
        schema,
        partition_columns,
        scanned,
        rows,
        index,
    })
}

/// Reader-side representations of the same logical type (string views,
/// dictionaries) are the reader's business, not the writer's: fold them.
pub fn normalize_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Dictionary(_, v) => normalize_type(v),
        other => other.clone(),
    }
}

fn column_values(arr: &ArrayRef) -> Result<Vec<V>, String> {
    let dt = arr.data_type().clone();
    let out = match &dt {
        DataType::Dictionary(_, value) => {
            let c = cast(arr, value).map_err(|e| e.to_string())?;
            return column_values(&c);
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let c = cast(arr, &DataType::Utf8).map_err(|e| e.to_string())?;
            let s = c.as_string::<i32>();
            s.iter().map(|v| v.map_or(V::Null, |v| V::S(v.to_string()))).collect()
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let c = cast(arr, &DataType::Int64).map_err(|e| e.to_string())?;
            let p = c.as_primitive::<Int64Type>();
            p.iter().map(|v| v.map_or(V::Null, V::I)).collect()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let c = cast(arr, &DataType::Float64).map_err(|e| e.to_string())?;
            let p = c.as_primitive::<Float64Type>();
            p.iter().map(|v| v.map_or(V::Null, V::F)).collect()
        }
        // Binary values are read as (lossy) text, to compare with the text they encode.
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let c = cast(arr, &DataType::Binary).map_err(|e| e.to_string())?;
            let b = c.as_binary::<i32>();
            b.iter().map(|v| v.map_or(V::Null, |v| V::S(String::from_utf8_lossy(v).into_owned()))).collect()
        }
        DataType::Boolean => {
            let b = arr.as_boolean();
            b.iter().map(|v| v.map_or(V::Null, V::B)).collect()
        }
        DataType::Timestamp(unit, _) => {
            let c = cast(arr, &DataType::Int64).map_err(|e| e.to_string())?;
            let p = c.as_primitive::<Int64Type>();
            let to_us = |x: i64| match unit {
                TimeUnit::Second => x * 1_000_000,
                TimeUnit::Millisecond => x * 1_000,
                TimeUnit::Microsecond => x,
                TimeUnit::Nanosecond => x.div_euclid(1_000),
            };
            p.iter().map(|v| v.map_or(V::Null, |v| V::Ts(to_us(v)))).collect()
        }
        DataType::Date32 => {
            let c = cast(arr, &DataType::Int32).map_err(|e| e.to_string())?;
            let c = cast(&c, &DataType::Int64).map_err(|e| e.to_string())?;
            let p = c.as_primitive::<Int64Type>();
            p.iter().map(|v| v.map_or(V::Null, |v| V::D(v as i32))).collect()
        }
        DataType::Date64 => {
            let c = cast(arr, &DataType::Int64).map_err(|e| e.to_string())?;
            let p = c.as_primitive::<Int64Type>();
            p.iter().map(|v| v.map_or(V::Null, |v| V::D(v.div_euclid(86_400_000) as i32))).collect()
        }
        other => return Err(format!("unsupported Arrow type {other}")),
    };
    Ok(out)
}

// ---------------------------------------------------------------------------
// Checks shared by all tables
// ---------------------------------------------------------------------------

pub fn ts_utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema and partitioning as the Delta log records them, and the scan's columns.
/// `ordered`: the columns must also come in the listed order.
pub fn check_schema(
    report: &mut Report,
    t: &TableData,
    expected: &[(&str, DataType)],
    partitioned_by_date: bool,
    ordered: bool,
) {
    let table = t.path.as_str();
    let want_parts: Vec<String> = if partitioned_by_date {
        vec!["date".into()]
    } else {
        vec![]
    };
    if t.partition_columns != want_parts {
        report.diff(
            table,
            format!(
                "partition columns: expected {want_parts:?}, got {:?}",
                t.partition_columns
            ),
        );
    }
    for (source, cols) in [("Delta schema", &t.schema), ("scanned batches", &t.scanned)] {
        let actual: HashMap<&str, &DataType> = cols.iter().map(|(n, d)| (n.as_str(), d)).collect();
        for (name, dt) in expected {
            match actual.get(name) {
                None => report.diff(table, format!("{source}: missing column `{name}` ({dt})")),
                Some(a) => {
                    let ok = if source == "Delta schema" {
                        *a == dt
                    } else {
                        normalize_type(a) == normalize_type(dt)
                    };
                    if !ok {
                        report.diff(
                            table,
                            format!("{source}: column `{name}`: expected type {dt}, got {a}"),
                        );
                    }
                }
            }
        }
        for (name, dt) in cols.iter() {
            if !expected.iter().any(|(n, _)| n == name) {
                report.diff(
                    table,
                    format!("{source}: unexpected column `{name}` ({dt})"),
                );
            }
        }
    }
    if ordered {
        let want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
        let got: Vec<&str> = t.schema.iter().map(|(n, _)| n.as_str()).collect();
        if want != got && want.len() == got.len() {
            report.diff(
                table,
                format!("column order: expected {want:?}, got {got:?}"),
            );
        }
    }
}

/// Expected rows of a windowed table: (window_start, key values) → cells.
pub type Expected = BTreeMap<(i64, Vec<K>), Vec<(&'static str, Exp)>>;

/// Compares a windowed table with its expected rows: same (window_start, keys) set,
/// every listed cell as expected, `window_end` = start + size (`None`: session
/// windows, whose ends the expected cells give), `date` = UTC date of the start, no
/// duplicate key.
pub fn compare_windowed(
    report: &mut Report,
    t: &TableData,
    size_us: Option<i64>,
    key_cols: &[&str],
    expected: &Expected,
) {
    let table = t.path.as_str();
    let mut needed = vec!["window_start", "window_end", "date"];
    needed.extend_from_slice(key_cols);
    for c in &needed {
        if t.col(c).is_none() {
            report.diff(table, format!("cannot compare rows: column `{c}` missing"));
            return;
        }
    }
    let mut actual: BTreeMap<(i64, Vec<K>), &Vec<V>> = BTreeMap::new();
    for row in &t.rows {
        let ws = match t.get(row, "window_start").unwrap() {
            V::Ts(ws) => *ws,
            other => {
                report.diff(
                    table,
                    format!("window_start is {other} in row {}", t.describe_row(row)),
                );
                continue;
            }
        };
        let keys: Option<Vec<K>> = key_cols
            .iter()
            .map(|c| key_of(t.get(row, c).unwrap()))
            .collect();
        let Some(keys) = keys else {
            report.diff(
                table,
                format!("key of unexpected type in row {}", t.describe_row(row)),
            );
            continue;
        };
        let key_s = fmt_key(ws, key_cols, &keys);
        let we = t.get(row, "window_end").unwrap();
        if let Some(size_us) = size_us.filter(|s| *we != V::Ts(ws + s)) {
            report.diff(
                table,
                format!(
                    "{key_s}: window_end: expected {}, got {we}",
                    fmt_us(ws + size_us)
                ),
            );
        }
        let date = t.get(row, "date").unwrap();
        let want_date = V::D(ws.div_euclid(DAY_US) as i32);
        if *date != want_date {
            report.diff(
                table,
                format!("{key_s}: date: expected {want_date}, got {date}"),
            );
        }
        if actual.insert((ws, keys), row).is_some() {
            report.diff(table, format!("{key_s}: more than one row for this key"));
        }
    }
    for ((ws, keys), cells) in expected {
        let key_s = fmt_key(*ws, key_cols, keys);
        match actual.get(&(*ws, keys.clone())) {
            None => {
                let cells_s: Vec<String> = cells.iter().map(|(c, e)| format!("{c}={e}")).collect();
                report.diff(
                    table,
                    format!("{key_s}: row missing (expected {})", cells_s.join(", ")),
                );
            }
            Some(row) => {
                for (c, e) in cells {
                    match t.get(row, c) {
                        None => {} // reported by the schema check
                        Some(a) => {
                            if let Err(why) = check_cell(e, a) {
                                report.diff(table, format!("{key_s}: column `{c}`: {why}"));
                            }
                        }
                    }
                }
            }
        }
    }
    for ((ws, keys), row) in &actual {
        if !expected.contains_key(&(*ws, keys.clone())) {
            report.diff(
                table,
                format!(
                    "{}: unexpected row ({})",
                    fmt_key(*ws, key_cols, keys),
                    t.describe_row(row)
                ),
            );
        }
    }
}

/// Compares a table of one row per key (a service mirror) with its expected rows:
/// the same key set, no duplicate key, every listed cell exactly as expected.
pub fn compare_keyed(
    report: &mut Report,
    t: &TableData,
    key_col: &str,
    expected: &BTreeMap<String, Vec<(&str, V)>>,
) {
    let table = t.path.as_str();
    let Some(k) = t.col(key_col) else {
        report.diff(
            table,
            format!("cannot compare rows: column `{key_col}` missing"),
        );
        return;
    };
    let mut actual: BTreeMap<&str, &Vec<V>> = BTreeMap::new();
    for row in &t.rows {
        match row[k].as_str() {
            None => report.diff(
                table,
                format!("row without a string key: {}", t.describe_row(row)),
            ),
            Some(key) if actual.insert(key, row).is_some() => {
                report.diff(table, format!("{key_col}={key:?}: more than one row"))
            }
            Some(_) => {}
        }
    }
    for (key, cells) in expected {
        let Some(row) = actual.get(key.as_str()) else {
            let cells_s: Vec<String> = cells.iter().map(|(c, v)| format!("{c}={v}")).collect();
            report.diff(
                table,
                format!(
                    "{key_col}={key:?}: row missing (expected {})",
                    cells_s.join(", ")
                ),
            );
            continue;
        };
        for (c, v) in cells {
            if let Some(a) = t.get(row, c) {
                if let Err(why) = check_cell(&Exp::Is(v.clone()), a) {
                    report.diff(table, format!("{key_col}={key:?}: column `{c}`: {why}"));
                }
            }
        }
    }
    for (key, row) in &actual {
        if !expected.contains_key(*key) {
            report.diff(
                table,
                format!(
                    "{key_col}={key:?}: unexpected row ({})",
                    t.describe_row(row)
                ),
            );
        }
    }
}

pub fn fmt_key(ws: i64, key_cols: &[&str], keys: &[K]) -> String {
    let mut s = format!("[window_start={}", fmt_us(ws));
    for (c, k) in key_cols.iter().zip(keys) {
        s.push_str(&format!(", {c}={k}"));
    }
    s.push(']');
    s
}

/// Lineage key of a message: (topic, partition, offset).
pub type Lineage = (String, i32, i64);

pub fn lineage_of(t: &TableData, row: &[V]) -> Option<Lineage> {
    let topic = t.get(row, "_topic")?.as_str()?.to_string();
    let partition = t.get(row, "_partition")?.as_i64()? as i32;
    let offset = t.get(row, "_offset")?.as_i64()?;
    Some((topic, partition, offset))
}

pub fn fmt_lineage(l: &Lineage) -> String {
    format!("{}/{}@{}", l.0, l.1, l.2)
}

/// Checks that `_ingested_at` is a timestamp within the run (with a second of slack).
pub fn check_ingested_at(
    report: &mut Report,
    t: &TableData,
    row: &[V],
    l: &Lineage,
    run_start_us: i64,
    run_end_us: i64,
) {
    match t.get(row, "_ingested_at") {
        None => {}
        Some(V::Ts(x)) if *x >= run_start_us - 1_000_000 && *x <= run_end_us + 1_000_000 => {}
        Some(other) => report.diff(
            &t.path,
            format!(
                "{}: _ingested_at {other} is not within the run ({} .. {})",
                fmt_lineage(l),
                fmt_us(run_start_us),
                fmt_us(run_end_us)
            ),
        ),
    }
}

/// The Python of the client tests (psycopg, deltalake, DuckDB, polars): `SLUICE_PYCLIENTS`,
/// which infra/test.sh sets, or infra/pyclients.sh's venv.
pub fn python() -> String {
    std::env::var("SLUICE_PYCLIENTS").unwrap_or_else(|_| {
        let out = std::process::Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/pyclients.sh")).output().unwrap();
        assert!(out.status.success(), "infra/pyclients.sh: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
    })
}
