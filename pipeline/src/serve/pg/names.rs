//! The names Postgres gives result columns. DataFusion names an unaliased
//! expression after its whole text (`sum(analytics.learner.engagement_daily.interactions)`);
//! Postgres names it after its function (`sum`), a column after the column
//! (`interactions`), a cast after what it casts, and anything else `?column?`.
//! Clients show these names, and Grafana keys series on them.

use std::sync::Arc;

use datafusion::logical_expr::{Expr, LogicalPlan};
use pgwire::api::results::FieldInfo;

/// The Postgres names of a plan's output columns.
pub fn postgres_names(plan: &LogicalPlan) -> Option<Vec<String>> {
    let fields = plan.schema().fields().len();
    let names: Vec<String> = (0..fields).map(|i| origin(plan, i).unwrap_or_else(|| plan.schema().field(i).name().clone())).collect();
    Some(names)
}

/// The name of output column `index` of `plan`, from the expression that makes it.
fn origin(plan: &LogicalPlan, index: usize) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => Some(name_of(p.expr.get(index)?, &p.input)),
        LogicalPlan::Aggregate(a) => {
            let groups = a.group_expr.len();
            let expr = if index < groups { a.group_expr.get(index)? } else { a.aggr_expr.get(index - groups)? };
            Some(name_of(expr, &a.input))
        }
        LogicalPlan::Window(w) => {
            let passed = w.input.schema().fields().len();
            if index < passed {
                origin(&w.input, index)
            } else {
                Some(name_of(w.window_expr.get(index - passed)?, &w.input))
            }
        }
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Distinct(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Repartition(_) => {
            origin(plan.inputs().first()?, index)
        }
        _ => None,
    }
}

/// The name Postgres would give one expression of a node over `input`.
fn name_of(expr: &Expr, input: &LogicalPlan) -> String {
    match expr {
        // DataFusion's own aliases (`count(*)` for `count(Int64(1))`) are text, not
        // names: a name with a parenthesis is one no client chose.
        Expr::Alias(alias) if alias.name.contains('(') => name_of(&alias.expr, input),
        Expr::Alias(alias) => alias.name.clone(),
        Expr::Column(column) => match input.schema().index_of_column(column) {
            Ok(index) => origin(input, index).unwrap_or_else(|| column.name.clone()),
            Err(_) => column.name.clone(),
        },
        Expr::ScalarFunction(f) => f.name().to_string(),
        Expr::AggregateFunction(f) => f.func.name().to_string(),
        Expr::WindowFunction(f) => f.fun.name().to_string(),
        Expr::Cast(cast) => name_of(&cast.expr, input),
        Expr::TryCast(cast) => name_of(&cast.expr, input),
        Expr::Case(_) => "case".into(),
        Expr::Exists(_) => "exists".into(),
        _ => "?column?".into(),
    }
}

/// `fields` with the names given, where there is one per field.
pub fn renamed(fields: &[FieldInfo], names: &[String]) -> Vec<FieldInfo> {
    if names.len() != fields.len() {
        return fields.to_vec();
    }
    fields
        .iter()
        .zip(names)
        .map(|(field, name)| {
            FieldInfo::new(name.clone(), field.table_id(), field.column_id(), field.datatype().clone(), field.format())
                .with_format_options(Arc::clone(field.format_options()))
                .with_type_size(field.type_size())
                .with_type_modifier(field.type_modifier())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn columns_are_named_as_postgres_names_them() {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]));
        ctx.register_batch("t", datafusion::arrow::array::RecordBatch::new_empty(schema)).unwrap();
        let names = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { postgres_names(ctx.sql(sql).await.unwrap().logical_plan()).unwrap() }
        };
        assert_eq!(names("SELECT sum(t.x), count(*), x, upper(s), x + 1, x AS y FROM t GROUP BY x, s").await, ["sum", "count", "x", "upper", "?column?", "y"]);
        assert_eq!(names("SELECT CAST(x AS DOUBLE), CASE WHEN x > 1 THEN 1 END, 1 FROM t ORDER BY 1 LIMIT 3").await, ["x", "case", "?column?"]);
        assert_eq!(names("SELECT DISTINCT max(x) FROM t").await, ["max"]);
        assert_eq!(names("SELECT * FROM (SELECT avg(x), s FROM t GROUP BY s) sub").await, ["avg", "s"]);
        assert_eq!(names("SELECT x, row_number() OVER (ORDER BY x) FROM t").await, ["x", "row_number"]);
    }
}
