//! Functions whose result can be far larger than their arguments (`repeat('x',
//! 2000000000)`, `range(1, 1e12)`), bounded before they run. Their memory is not
//! a DataFusion reservation: one call would allocate it at once, and a failed
//! allocation aborts the process. So each call first estimates, from its
//! arguments, an upper bound of the bytes it makes for the whole batch, and
//! refuses above [`MAX_RESULT_BYTES`] with a message naming the function.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature};
use datafusion::prelude::SessionContext;

/// The most one call of a guarded function may make, for its whole batch.
pub const MAX_RESULT_BYTES: u64 = 64 << 20;

/// An upper bound of the bytes a call makes, from its arguments and row count.
type Estimate = fn(&[ColumnarValue], usize) -> u64;

/// The guarded built-ins and how their results grow.
const GUARDED: [(&str, Estimate); 9] = [
    ("repeat", |a, n| sum(n, |i| len(a, 0, i).saturating_mul(int(a, 1, i)))),
    ("lpad", |a, n| sum(n, |i| int(a, 1, i).saturating_mul(4))),
    ("rpad", |a, n| sum(n, |i| int(a, 1, i).saturating_mul(4))),
    ("replace", |a, n| sum(n, |i| len(a, 0, i).saturating_mul(len(a, 2, i).max(1)))),
    ("regexp_replace", |a, n| {
        // Every match (at most one per position) becomes the replacement, whose
        // group references each copy at most the whole string.
        sum(n, |i| {
            let (text, replacement) = (len(a, 0, i), len(a, 2, i));
            let references = text_at(a, 2, i).map_or(replacement, |r| r.matches(['\\', '$']).count() as u64);
            let each = replacement.saturating_add(references.saturating_mul(text));
            text.saturating_add(text.saturating_add(1).saturating_mul(each))
        })
    }),
    ("array_repeat", |a, n| sum(n, |i| int(a, 1, i).saturating_mul(16))),
    ("array_resize", |a, n| sum(n, |i| int(a, 1, i).saturating_mul(16))),
    ("range", |a, n| sum(n, |i| steps(a, i).saturating_mul(16))),
    ("generate_series", |a, n| sum(n, |i| steps(a, i).saturating_mul(16))),
];

/// Replaces the session's guarded built-ins with their bounded versions.
pub fn bound(ctx: &SessionContext) {
    let state: SessionState = ctx.state();
    for (name, estimate) in GUARDED {
        if let Some(inner) = state.scalar_functions().get(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner: inner.as_ref().clone(), estimate }));
        }
    }
}

/// A built-in that checks [`Estimate`] before it runs; otherwise the same function.
#[derive(Debug)]
struct Bounded {
    inner: ScalarUDF,
    estimate: Estimate,
}

/// The function it bounds identifies a bounded function (its estimate goes with its name).
impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for Bounded {}

impl std::hash::Hash for Bounded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = (self.estimate)(&args.args, args.number_rows.max(1));
        if bytes > MAX_RESULT_BYTES {
            return exec_err!(
                "{}: the result could take {} MiB, more than the {} MiB one call may make here",
                self.name(),
                bytes >> 20,
                MAX_RESULT_BYTES >> 20
            );
        }
        self.inner.invoke_with_args(args)
    }
}

fn sum(rows: usize, each: impl Fn(usize) -> u64) -> u64 {
    (0..rows).fold(0u64, |total, i| total.saturating_add(each(i)))
}

/// The scalar of argument `arg` at row `row`, if there is one.
fn scalar_at(args: &[ColumnarValue], arg: usize, row: usize) -> Option<ScalarValue> {
    match args.get(arg)? {
        ColumnarValue::Scalar(s) => Some(s.clone()),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok(),
    }
}

/// The byte length of a string argument at a row (0 for null or another type).
fn len(args: &[ColumnarValue], arg: usize, row: usize) -> u64 {
    match args.get(arg) {
        Some(ColumnarValue::Array(a)) if a.is_valid(row) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(row).len() as u64,
            DataType::LargeUtf8 => a.as_string::<i64>().value(row).len() as u64,
            DataType::Utf8View => a.as_string_view().value(row).len() as u64,
            _ => 0,
        },
        _ => text_at(args, arg, row).map_or(0, |s| s.len() as u64),
    }
}

fn text_at(args: &[ColumnarValue], arg: usize, row: usize) -> Option<String> {
    match scalar_at(args, arg, row)? {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s,
        _ => None,
    }
}

/// A non-negative integer argument at a row (0 for null, negative or another type).
fn int(args: &[ColumnarValue], arg: usize, row: usize) -> u64 {
    scalar_at(args, arg, row).and_then(|s| as_i128(&s)).map_or(0, |v| u64::try_from(v.max(0)).unwrap_or(u64::MAX))
}

fn as_i128(value: &ScalarValue) -> Option<i128> {
    Some(match value {
        ScalarValue::Int8(Some(v)) => i128::from(*v),
        ScalarValue::Int16(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::UInt8(Some(v)) => i128::from(*v),
        ScalarValue::UInt16(Some(v)) => i128::from(*v),
        ScalarValue::UInt32(Some(v)) => i128::from(*v),
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        _ => return None,
    })
}

/// How many elements `range`/`generate_series` make at a row: `(stop - start) /
/// step` for integers, dates and timestamps (a month counted as 28 days).
fn steps(args: &[ColumnarValue], row: usize) -> u64 {
    let point = |arg: usize| -> Option<i128> {
        let value = scalar_at(args, arg, row)?;
        as_i128(&value).or(match value {
            ScalarValue::Date32(Some(d)) => Some(i128::from(d) * 86_400_000_000_000),
            ScalarValue::Date64(Some(ms)) => Some(i128::from(ms) * 1_000_000),
            ScalarValue::TimestampSecond(Some(v), _) => Some(i128::from(v) * 1_000_000_000),
            ScalarValue::TimestampMillisecond(Some(v), _) => Some(i128::from(v) * 1_000_000),
            ScalarValue::TimestampMicrosecond(Some(v), _) => Some(i128::from(v) * 1_000),
            ScalarValue::TimestampNanosecond(Some(v), _) => Some(i128::from(v)),
            _ => None,
        })
    };
    let (first, second) = match args.len() {
        1 => (Some(0), point(0)),
        _ => (point(0), point(1)),
    };
    let (Some(start), Some(stop)) = (first, second) else { return 0 };
    let step = match scalar_at(args, 2, row) {
        None => 1,
        Some(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months, days, nanoseconds }))) => {
            i128::from(months) * 28 * 86_400_000_000_000 + i128::from(days) * 86_400_000_000_000 + i128::from(nanoseconds)
        }
        Some(ScalarValue::IntervalDayTime(Some(i))) => i128::from(i.days) * 86_400_000_000_000 + i128::from(i.milliseconds) * 1_000_000,
        Some(ScalarValue::IntervalYearMonth(Some(months))) => i128::from(months) * 28 * 86_400_000_000_000,
        Some(other) => as_i128(&other).unwrap_or(1),
    };
    let count = (stop - start).checked_div(step.abs().max(1)).unwrap_or(0).unsigned_abs();
    u64::try_from(count).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(ctx: &SessionContext, sql: &str) -> std::result::Result<usize, String> {
        let frame = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = frame.collect().await.map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn results_that_would_explode_are_refused_and_the_rest_answered() {
        let ctx = SessionContext::new();
        bound(&ctx);
        for sql in [
            "SELECT repeat('ab', 2000000000)",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 100000000, 'y')",
            "SELECT length(replace(repeat('a', 1000000), 'a', repeat('b', 100)))",
            "SELECT regexp_replace(repeat('a', 10000), '', repeat('b', 10000), 'g')",
            "SELECT array_repeat(1, 100000000)",
            "SELECT range(1, 1000000000000)",
            "SELECT generate_series(DATE '2000-01-01', DATE '2100-01-01', INTERVAL '1 second')",
            "SELECT sum(length(repeat('x', 100000 + value::int))) FROM range(1, 2000)",
        ] {
            let refused = answer(&ctx, sql).await.expect_err(sql);
            assert!(refused.contains("more than the 64 MiB one call may make here"), "{sql}: {refused}");
        }
        for sql in [
            "SELECT repeat('ab', 3), lpad('7', 3, '0'), rpad('x', 2), replace('a/b', '/', '-')",
            "SELECT regexp_replace('/users/42', '/[0-9]+', '/:id', 'g')",
            "SELECT array_repeat(1, 3), range(1, 10), generate_series(1, 5)",
            "SELECT * FROM generate_series(1, 100000)",
        ] {
            assert!(answer(&ctx, sql).await.is_ok(), "{sql}");
        }
        let names = ctx.sql("SELECT repeat('a', 2)").await.unwrap().schema().field(0).name().clone();
        assert_eq!(names, "repeat(Utf8(\"a\"),Int64(2))", "the same column name as the built-in's");
    }
}
