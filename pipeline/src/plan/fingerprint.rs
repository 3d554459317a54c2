//! A plan's fingerprint, kept with a table's checkpoint: a later run with another
//! rebuilds the table, and the fingerprints of the plan's parts say what changed.

use std::collections::BTreeMap;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;

/// The fingerprint of each part of an unoptimized plan a change may touch.
pub(super) fn parts_of(plan: &LogicalPlan, directives: &str) -> BTreeMap<String, String> {
    let mut text: BTreeMap<&str, String> = BTreeMap::new();
    let mut add = |part: &'static str, what: String| text.entry(part).or_default().push_str(&format!("{what}\n"));
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::TableScan(scan) => add("sources", scan.table_name.to_string()),
            LogicalPlan::Filter(filter) => add("filters", filter.predicate.to_string()),
            LogicalPlan::Aggregate(a) => {
                add("grouping", a.group_expr.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "));
                add("aggregates", a.aggr_expr.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "));
            }
            LogicalPlan::Join(join) => add("joins", format!("{:?} {:?} {:?}", join.join_type, join.on, join.filter)),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let columns = plan.schema().fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ");
    text.insert("columns", columns);
    text.insert("directives", directives.to_string());
    text.into_iter().map(|(part, what)| (part.to_string(), fingerprint(&what))).collect()
}

/// What differs between two plans' parts, for a person: "its aggregates and
/// columns changed", or "its plan changed" when no part says (an old checkpoint, or a
/// change elsewhere in the plan).
pub fn what_changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changed: Vec<&str> = match before.is_empty() {
        true => Vec::new(),
        false => keys.into_iter().filter(|k| before.get(*k) != after.get(*k)).map(String::as_str).collect(),
    };
    match changed.as_slice() {
        [] => "its plan changed".to_string(),
        [one] => format!("its {one} changed"),
        [rest @ .., last] => format!("its {} and {last} changed", rest.join(", ")),
    }
}

/// FNV-1a of the plan's text: stable across builds and machines, so it can be
/// kept in the lake and compared by a later run.
pub(super) fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}
