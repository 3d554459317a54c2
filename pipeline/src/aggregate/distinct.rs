//! `count(DISTINCT text)` for many groups at once. DataFusion 55 has a groups
//! accumulator for distinct integers only; text went through its adapter, which
//! takes each group's rows out of every batch and runs one accumulator per group
//! (8 % of the full mix's CPU, for the nine `count(DISTINCT user_id)`s). This one
//! keeps a set of seen values per group and copies a value only the first time
//! its group sees it. Its state is DataFusion's (a list of the values per group),
//! so checkpoints written by either read back into both.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeStringArray, ListArray, StringArray, StringBuilder, StringViewArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

/// Per group, the distinct values seen.
#[derive(Debug)]
pub struct DistinctText {
    /// The state list's item field, as DataFusion's `count` declares it.
    item: FieldRef,
    seen: Vec<HashSet<Box<str>>>,
    /// The values' bytes and the sets' entries, for [`size`](GroupsAccumulator::size).
    bytes: usize,
}

impl DistinctText {
    /// The accumulator for `f` if it is `count(DISTINCT x)` over text.
    pub fn for_function(f: &AggregateFunctionExpr) -> Option<Self> {
        if f.fun().name() != "count" || !f.is_distinct() || f.expressions().len() != 1 {
            return None;
        }
        let fields = f.state_fields().ok()?;
        let [state] = fields.as_slice() else { return None };
        let DataType::List(item) = state.data_type() else { return None };
        let text = matches!(item.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        text.then(|| DistinctText { item: item.clone(), seen: Vec::new(), bytes: 0 })
    }

    fn insert(&mut self, group: usize, value: &str) {
        let set = &mut self.seen[group];
        if !set.contains(value) {
            self.bytes += footprint(value);
            set.insert(value.into());
        }
    }

    /// The sets of the groups `emit_to` names, taken out.
    fn take(&mut self, emit_to: EmitTo) -> Vec<HashSet<Box<str>>> {
        let sets = emit_to.take_needed(&mut self.seen);
        self.bytes = self.bytes.saturating_sub(sets.iter().flatten().map(|v| footprint(v)).sum());
        sets
    }

    /// Lists of `values` cut at `offsets`, in the state's type.
    fn lists(&self, offsets: Vec<i32>, values: StringArray) -> Result<ArrayRef> {
        let values = arrow::compute::cast(&values, self.item.data_type())?;
        let offsets = OffsetBuffer::new(offsets.into());
        Ok(Arc::new(ListArray::try_new(self.item.clone(), offsets, values, None)?))
    }
}

/// A text column of any of Arrow's three text types.
enum Text<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> Text<'a> {
    fn of(values: &'a dyn Array) -> Result<Self> {
        match values.data_type() {
            DataType::Utf8 => Ok(Text::Utf8(values.as_string::<i32>())),
            DataType::LargeUtf8 => Ok(Text::Large(values.as_string::<i64>())),
            DataType::Utf8View => Ok(Text::View(values.as_string_view())),
            other => Err(DataFusionError::Internal(format!("count(DISTINCT) over text got {other}"))),
        }
    }

    /// Row `row`'s value, if not null.
    fn get(&self, row: usize) -> Option<&'a str> {
        match self {
            Text::Utf8(a) => a.is_valid(row).then(|| a.value(row)),
            Text::Large(a) => a.is_valid(row).then(|| a.value(row)),
            Text::View(a) => a.is_valid(row).then(|| a.value(row)),
        }
    }
}

/// A value's bytes and its entry in a set, roughly.
fn footprint(value: &str) -> usize {
    value.len() + 2 * std::mem::size_of::<Box<str>>()
}

/// A state list's offset: a `List` (not `LargeList`) counts in `i32`.
fn list_offset(values: usize) -> Result<i32> {
    i32::try_from(values).map_err(|_| DataFusionError::Internal("count(DISTINCT) state over 2^31 values".into()))
}

fn included(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl GroupsAccumulator for DistinctText {
    fn update_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], opt_filter: Option<&BooleanArray>, total_num_groups: usize) -> Result<()> {
        self.seen.resize_with(total_num_groups, HashSet::new);
        let text = Text::of(values[0].as_ref())?;
        for (row, &group) in group_indices.iter().enumerate() {
            if let Some(value) = text.get(row).filter(|_| included(opt_filter, row)) {
                self.insert(group, value);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sets = self.take(emit_to);
        Ok(Arc::new(Int64Array::from_iter_values(sets.iter().map(|s| s.len() as i64))))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let sets = self.take(emit_to);
        let mut offsets = Vec::with_capacity(sets.len() + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for set in &sets {
            total += set.len();
            offsets.push(list_offset(total)?);
        }
        let mut values = StringBuilder::with_capacity(total, sets.iter().flatten().map(|v| v.len()).sum());
        sets.iter().flatten().for_each(|v| values.append_value(v));
        let values = values.finish();
        Ok(vec![self.lists(offsets, values)?])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.seen.resize_with(total_num_groups, HashSet::new);
        let lists = values[0].as_list_opt::<i32>().ok_or_else(|| DataFusionError::Internal(format!("count(DISTINCT) state is {}", values[0].data_type())))?;
        let items = Text::of(lists.values().as_ref())?;
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let (start, end) = (lists.value_offsets()[row] as usize, lists.value_offsets()[row + 1] as usize);
            for value in (start..end).filter_map(|i| items.get(i)) {
                self.insert(group, value);
            }
        }
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let text = Text::of(values[0].as_ref())?;
        let mut offsets = Vec::with_capacity(values[0].len() + 1);
        offsets.push(0i32);
        let mut kept = Vec::new();
        for row in 0..values[0].len() {
            kept.extend(text.get(row).filter(|_| included(opt_filter, row)));
            offsets.push(list_offset(kept.len())?);
        }
        Ok(vec![self.lists(offsets, StringArray::from_iter_values(kept))?])
    }

    fn size(&self) -> usize {
        self.bytes + self.seen.capacity() * std::mem::size_of::<HashSet<Box<str>>>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::StringViewArray;
    use arrow::datatypes::{Field, Schema};
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::GroupsAccumulatorAdapter;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn count(data_type: DataType, distinct: bool) -> Arc<AggregateFunctionExpr> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", data_type, true)]));
        let builder = AggregateExprBuilder::new(count_udaf(), vec![col("v", &schema).unwrap()]).schema(schema).alias("n");
        Arc::new(if distinct { builder.distinct() } else { builder }.build().unwrap())
    }

    #[test]
    fn only_count_distinct_over_text_is_taken() {
        for text in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            assert!(DistinctText::for_function(&count(text.clone(), true)).is_some(), "{text}");
            assert!(DistinctText::for_function(&count(text, false)).is_none());
        }
        assert!(DistinctText::for_function(&count(DataType::Int64, true)).is_none());
    }

    /// Against a set per group, and against DataFusion's own accumulator through
    /// its adapter: the counts, and each one's state merged into the other.
    #[test]
    fn counts_and_states_match_a_set_per_group_and_datafusions_accumulator() {
        let mut rng = SmallRng::seed_from_u64(7);
        for data_type in [DataType::Utf8, DataType::Utf8View] {
            let f = count(data_type.clone(), true);
            let ours = || -> Box<dyn GroupsAccumulator> { Box::new(DistinctText::for_function(&f).unwrap()) };
            let theirs = || -> Box<dyn GroupsAccumulator> {
                let f = f.clone();
                Box::new(GroupsAccumulatorAdapter::new(move || f.create_accumulator()))
            };
            let (mut a, mut b) = (ours(), theirs());
            let mut model: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
            let mut groups = 0;
            for _ in 0..20 {
                groups += rng.random_range(0..4);
                let n = rng.random_range(0..60);
                let values: Vec<Option<String>> =
                    (0..n).map(|_| rng.random_bool(0.85).then(|| format!("user-{}", rng.random_range(0..12)))).collect();
                let ids: Vec<usize> = (0..n).map(|_| rng.random_range(0..groups.max(1))).collect();
                let filter: Option<BooleanArray> =
                    rng.random_bool(0.5).then(|| (0..n).map(|_| rng.random_bool(0.9).then(|| rng.random_bool(0.7))).collect());
                let array: ArrayRef = match data_type {
                    DataType::Utf8View => Arc::new(StringViewArray::from_iter(values.clone())),
                    _ => Arc::new(StringArray::from_iter(values.clone())),
                };
                for (row, value) in values.iter().enumerate() {
                    let kept = filter.as_ref().is_none_or(|f| f.is_valid(row) && f.value(row));
                    if let (Some(value), true) = (value, kept) {
                        model.entry(ids[row]).or_default().insert(value.clone());
                    }
                }
                let total = groups.max(1);
                a.update_batch(std::slice::from_ref(&array), &ids, filter.as_ref(), total).unwrap();
                b.update_batch(&[array], &ids, filter.as_ref(), total).unwrap();
            }
            let total = groups.max(1);
            let expected: Vec<i64> = (0..total).map(|g| model.get(&g).map_or(0, |s| s.len() as i64)).collect();

            // Each state read back by the other, every group at once and in pieces.
            let (state_a, state_b) = (a.state(EmitTo::All).unwrap(), b.state(EmitTo::All).unwrap());
            assert_eq!(state_a[0].data_type(), f.state_fields().unwrap()[0].data_type());
            let ids: Vec<usize> = (0..total).collect();
            let (mut a2, mut b2) = (ours(), theirs());
            a2.merge_batch(&state_b, &ids, total).unwrap();
            b2.merge_batch(&state_a, &ids, total).unwrap();
            // Merged twice, split: the second half's groups first, into a third.
            let mut a3 = ours();
            let half = total / 2;
            let (first, second) = (state_a[0].slice(0, half), state_a[0].slice(half, total - half));
            a3.merge_batch(&[second], &(half..total).collect::<Vec<_>>(), total).unwrap();
            a3.merge_batch(std::slice::from_ref(&first), &(0..half).collect::<Vec<_>>(), total).unwrap();
            a3.merge_batch(&[first], &(0..half).collect::<Vec<_>>(), total).unwrap();
            for mut acc in [a2, b2, a3] {
                let counts = acc.evaluate(EmitTo::All).unwrap();
                assert_eq!(counts.as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), expected, "{data_type}");
            }

            // Rows as states: each row's value counts once.
            let values: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None, Some("x"), Some("y")]));
            let values = arrow::compute::cast(&values, &data_type).unwrap();
            let state = ours().convert_to_state(&[values], Some(&BooleanArray::from(vec![true, true, true, false]))).unwrap();
            let mut c = ours();
            c.merge_batch(&state, &[0, 0, 1, 1], 2).unwrap();
            assert_eq!(c.evaluate(EmitTo::First(1)).unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), vec![1]);
            assert_eq!(c.evaluate(EmitTo::All).unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), vec![1]);
        }
    }
}
