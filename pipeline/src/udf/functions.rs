//! Loaded plugins as DataFusion functions: scalar and async UDFs as
//! `ScalarUDFImpl`s, aggregates (`Vec<T>` arguments) as `AggregateUDFImpl`s whose
//! accumulator keeps the group's values (its state in window checkpoints) and calls
//! the plugin once, when the window is emitted.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, ListArray, UInt32Array};
use arrow::compute::{cast, concat, take};
use arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature as DfSignature, Volatility,
};

use super::ffi::{AsyncHandle, Library};
use super::signature::{AsyncOptions, Kind, Signature};

/// One loaded UDF: its declared signature and its library.
#[derive(Clone)]
pub struct Plugin {
    signature: Arc<Signature>,
    df_signature: DfSignature,
    /// None when only declared (planning without running).
    library: Option<Arc<Library>>,
    /// An async function's runtime, started on first use.
    runtime: Arc<Mutex<Option<AsyncHandle>>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "udf {}", self.signature)
    }
}

impl PartialEq for Plugin {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for Plugin {}

impl Hash for Plugin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.name.hash(state);
    }
}

impl Plugin {
    pub fn new(signature: Signature, library: Option<Library>) -> Self {
        let types = signature.args.iter().map(|a| a.data_type.clone()).collect();
        // Async lookups may answer differently over time; the others are pure.
        let volatility = if matches!(signature.kind, Kind::Async(_)) { Volatility::Volatile } else { Volatility::Immutable };
        Plugin {
            df_signature: DfSignature::exact(types, volatility),
            signature: Arc::new(signature),
            library: library.map(Arc::new),
            runtime: Arc::default(),
        }
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    fn name(&self) -> &str {
        &self.signature.name
    }

    /// An error of this function's calls.
    fn error(&self, message: String) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::Execution(format!("UDF {}: {message}", self.name()))
    }

    fn library(&self) -> Result<&Library> {
        match &self.library {
            Some(l) => Ok(l),
            None => exec_err!("UDF {} is declared but not built", self.name()),
        }
    }

    /// The arguments as the plugin imports them: exactly the declared types.
    fn exact_args(&self, args: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        args.iter()
            .zip(&self.signature.args)
            .map(|(a, declared)| if a.data_type() == &declared.data_type { Ok(a.clone()) } else { Ok(cast(a, &declared.data_type)?) })
            .collect()
    }

    /// Checks a result's type and length against the declaration.
    fn checked(&self, result: ArrayRef, rows: usize) -> Result<ArrayRef> {
        let declared = &self.signature.result.data_type;
        if result.data_type() != declared {
            return exec_err!("UDF {} returned {} values, but declares {declared}", self.name(), result.data_type());
        }
        if result.len() != rows {
            return exec_err!("UDF {} returned {} rows for {rows}", self.name(), result.len());
        }
        Ok(result)
    }

    /// A sync call over whole arrays; when the function panics, finds the first row
    /// it panics on, for the error.
    fn run(&self, args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
        let fail = |e| self.error(e);
        let library = self.library()?;
        if let Some(result) = library.run(args).map_err(fail)? {
            return self.checked(result, rows);
        }
        for row in 0..rows {
            let one: Vec<ArrayRef> = args.iter().map(|a| a.slice(row, 1)).collect();
            if library.run(&one).map_err(fail)?.is_none() {
                let values: Vec<String> = one
                    .iter()
                    .map(|a| arrow::util::display::array_value_to_string(a, 0).unwrap_or_else(|_| "?".into()))
                    .collect();
                return exec_err!(
                    "UDF {} panicked on row {row} of its batch, arguments ({}); its message is on stderr",
                    self.name(),
                    values.join(", ")
                );
            }
        }
        exec_err!("UDF {} panicked on a batch of {rows} rows (on none of them alone); its message is on stderr", self.name())
    }

    /// An async call: each row with no null where the function takes no null is sent
    /// on its own (the plugin holds back sends beyond its in-flight limit), and the
    /// results are placed by row id, until all are in, or none came for twice the
    /// function's timeout (the plugin itself fails a call that takes longer).
    fn run_async(&self, args: &[ArrayRef], rows: usize, options: &AsyncOptions) -> Result<ArrayRef> {
        let fail = |e| self.error(e);
        let library = self.library()?;
        let handle = {
            let mut runtime = self.runtime.lock().map_err(|_| fail("its runtime lock was poisoned".into()))?;
            match *runtime {
                Some(h) => h,
                None => {
                    let timeout = options.timeout.as_micros().min(u128::from(u64::MAX)) as u64;
                    let h = library.start(options.ordered, timeout, options.allowed_in_flight).map_err(fail)?;
                    *runtime = Some(h);
                    h
                }
            }
        };
        let sendable: Vec<usize> = (0..rows)
            .filter(|&row| self.signature.args.iter().zip(args).all(|(declared, a)| declared.nullable || a.is_valid(row)))
            .collect();
        let mut slots: Vec<Option<u32>> = vec![None; rows];
        let mut values = Vec::new();
        let patience = options.timeout.saturating_mul(2).max(std::time::Duration::from_secs(1));
        let mut pending = sendable.len();
        let collect = |slots: &mut Vec<Option<u32>>, values: &mut Vec<ArrayRef>, pending: &mut usize| -> Result<()> {
            while let Some((ids, results)) = library.drain(handle).map_err(fail)? {
                let ids = arrow::array::make_array(ids);
                let results = arrow::array::make_array(results);
                let ids = ids.as_primitive_opt::<UInt64Type>().ok_or_else(|| fail("result ids are not UInt64".into()))?;
                let base = values.iter().map(|v| v.len()).sum::<usize>() as u32;
                for (i, id) in ids.values().iter().enumerate() {
                    let slot = slots.get_mut(*id as usize).ok_or_else(|| fail(format!("a result for unknown row {id}")))?;
                    *slot = Some(base + i as u32);
                    *pending = pending.saturating_sub(1);
                }
                values.push(results);
            }
            Ok(())
        };
        for &row in &sendable {
            let one: Vec<ArrayRef> = args.iter().map(|a| a.slice(row, 1)).collect();
            if !futures::executor::block_on(library.send(handle, row as u64, &one)).map_err(fail)? {
                return Err(fail("its runtime stopped (a call panicked or timed out); its message is on stderr".into()));
            }
            collect(&mut slots, &mut values, &mut pending)?;
        }
        let mut last_answer = Instant::now();
        while pending > 0 {
            if last_answer.elapsed() > patience {
                return Err(fail(format!("{pending} of {} calls did not answer within {patience:?}", sendable.len())));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            let before = pending;
            collect(&mut slots, &mut values, &mut pending)?;
            if pending < before {
                last_answer = Instant::now();
            }
        }
        if values.is_empty() {
            return Ok(new_null_array(&self.signature.result.data_type, rows));
        }
        let all = concat(&values.iter().map(|v| v.as_ref()).collect::<Vec<&dyn Array>>())?;
        // Rows not sent (a null argument) have no slot: a null index, a null value.
        let indices: UInt32Array = slots.into_iter().collect();
        let placed = take(&all, &indices, None)?;
        self.checked(placed, rows)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // The last clone stops the async runtime.
        if Arc::strong_count(&self.runtime) == 1 {
            if let Ok(mut runtime) = self.runtime.lock() {
                if let (Some(h), Some(library)) = (runtime.take(), &self.library) {
                    library.stop(h);
                }
            }
        }
    }
}

/// A scalar or async UDF as a DataFusion scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ScalarPlugin(pub Plugin);

impl ScalarUDFImpl for ScalarPlugin {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn signature(&self) -> &DfSignature {
        &self.0.df_signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.0.signature.result.data_type.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays = self.0.exact_args(&arrays)?;
        if rows == 0 {
            return Ok(ColumnarValue::Array(new_null_array(&self.0.signature.result.data_type, 0)));
        }
        let result = match &self.0.signature.kind {
            Kind::Async(options) => self.0.run_async(&arrays, rows, options)?,
            _ => self.0.run(&arrays, rows)?,
        };
        Ok(ColumnarValue::Array(result))
    }
}

/// An aggregate UDF (`Vec<T>` arguments) as a DataFusion aggregate function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AggregatePlugin(pub Plugin);

impl AggregateUDFImpl for AggregatePlugin {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn signature(&self) -> &DfSignature {
        &self.0.df_signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.0.signature.result.data_type.clone())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Values { plugin: self.0.clone(), columns: vec![Vec::new(); self.0.signature.args.len()] }))
    }

    /// One list of values per argument.
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(self
            .0
            .signature
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| Arc::new(Field::new(format!("{}[{i}]", args.name), list_of(&a.data_type), true)))
            .collect())
    }
}

fn list_of(t: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(t.clone(), true)))
}

/// A group's values per argument, until the window is emitted.
#[derive(Debug)]
struct Values {
    plugin: Plugin,
    columns: Vec<Vec<ArrayRef>>,
}

impl Values {
    fn concatenated(&self) -> Result<Vec<ArrayRef>> {
        self.columns
            .iter()
            .zip(&self.plugin.signature.args)
            .map(|(parts, declared)| match parts.as_slice() {
                [] => Ok(new_null_array(&declared.data_type, 0)),
                _ => Ok(concat(&parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?),
            })
            .collect()
    }
}

impl Accumulator for Values {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let values = self.plugin.exact_args(values)?;
        for (column, v) in self.columns.iter_mut().zip(values) {
            if !v.is_empty() {
                column.push(v);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let args = self.concatenated()?;
        let declared = &self.plugin.signature.result.data_type;
        // Like Arroyo: a group without values is null, without calling the function.
        if args.iter().all(|a| a.len() == a.null_count()) {
            return ScalarValue::try_from(declared);
        }
        let result = self.plugin.run(&args, 1)?;
        ScalarValue::try_from_array(&result, 0)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.columns.iter().flatten().map(|a| a.get_array_memory_size()).sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let args = self.concatenated()?;
        Ok(args.into_iter().map(|a| ScalarValue::List(Arc::new(single_list(a)))).collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (column, state) in self.columns.iter_mut().zip(states) {
            let Some(lists) = state.as_list_opt::<i32>() else { return exec_err!("UDAF state is not a list") };
            for list in lists.iter().flatten() {
                if !list.is_empty() {
                    column.push(list);
                }
            }
        }
        Ok(())
    }
}

/// One list holding all of `values`.
fn single_list(values: ArrayRef) -> ListArray {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    ListArray::new(field, arrow::buffer::OffsetBuffer::from_lengths([values.len()]), values, None)
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    #[test]
    fn a_result_of_another_type_or_length_than_declared_is_an_error_naming_the_function() {
        let signature = super::super::signature::parse("#[udf] fn label(x: i64) -> String { x.to_string() }").unwrap();
        let plugin = Plugin::new(signature, None);
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let err = plugin.checked(numbers.clone(), 2).unwrap_err().to_string();
        assert!(err.contains("UDF label returned Int64 values, but declares Utf8"), "{err}");
        let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["1"]));
        let err = plugin.checked(text, 2).unwrap_err().to_string();
        assert!(err.contains("UDF label returned 1 rows for 2"), "{err}");
        let err = plugin.run(&[numbers], 2).unwrap_err().to_string();
        assert!(err.contains("UDF label is declared but not built"), "{err}");
    }
}
