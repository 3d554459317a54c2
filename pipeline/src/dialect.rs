//! What Sluice adds to DataFusion's SQL: the window functions of the Arroyo dialect,
//! `tumble(width)`, `hop(slide, width)` and `session(gap)` in a GROUP BY, and the
//! planner's own current-state key. The planner recognises the calls and the window
//! and keyed operators evaluate them; DataFusion never runs them, so invoking one
//! directly is an error. Its own module because both the [`crate::plan`]ner and the
//! [`crate::udf`] loader (which keeps user functions off these names) need it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::schema::timestamp_type;

/// The type of a `window` column: `{start, end}` timestamps.
pub fn window_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("start", timestamp_type(), false),
        Field::new("end", timestamp_type(), false),
    ]))
}

/// The window functions, by name.
pub const WINDOW_FUNCTIONS: [&str; 3] = ["tumble", "hop", "session"];

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!("{}() defines a window: use it in the GROUP BY of a streaming query", self.name)
    }
}

/// `tumble(interval)`: fixed, non-overlapping windows aligned to the epoch (UTC).
pub fn tumble() -> ScalarUDF {
    // Volatile, so the optimizer neither folds nor drops this constant-argument call.
    ScalarUDF::new_from_impl(WindowFunction { name: "tumble", signature: Signature::variadic_any(Volatility::Volatile) })
}

/// `hop(slide, width)`: windows `width` long, one starting every `slide`, aligned to
/// the epoch (UTC); an event is in `width / slide` of them.
pub fn hop() -> ScalarUDF {
    ScalarUDF::new_from_impl(WindowFunction { name: "hop", signature: Signature::variadic_any(Volatility::Volatile) })
}

/// `session(gap)`: per GROUP BY key, runs of events less than `gap` apart.
pub fn session() -> ScalarUDF {
    ScalarUDF::new_from_impl(WindowFunction { name: "session", signature: Signature::variadic_any(Volatility::Volatile) })
}

/// What a current-state query's first GROUP BY key becomes while planning:
/// `__sluice_current_key(key, ts[, removed])`, so that the optimizer keeps the event
/// time and the removal condition's columns in the aggregate's input. Never run:
/// the planner takes its arguments apart again.
pub const CURRENT_KEY: &str = "__sluice_current_key";

#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentKey {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentKey {
    fn name(&self) -> &str {
        CURRENT_KEY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!("{CURRENT_KEY} is the planner's own: it never runs")
    }
}

pub fn current_key() -> ScalarUDF {
    ScalarUDF::new_from_impl(CurrentKey { signature: Signature::variadic_any(Volatility::Volatile) })
}

/// The window functions, for a planner's session.
pub fn all() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(tumble()), Arc::new(hop()), Arc::new(session())]
}
