//! `information_schema` as Postgres clients read it (Grafana's column picker,
//! JDBC tools): Postgres type names, 1-based ordinal positions, `BASE TABLE`, and
//! only the tables the session may read. DataFusion's own speaks Arrow types.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;

/// The tables a session may read, with their columns: what the views list.
#[async_trait]
pub trait Listing: std::fmt::Debug + Send + Sync {
    /// `(schema, table, columns)`, schemas as `catalog.schema`.
    async fn listed(&self) -> Vec<(String, String, SchemaRef)>;
}

#[derive(Debug)]
pub struct InformationSchema {
    pub listing: Arc<dyn Listing>,
    /// The database clients see the tables in.
    pub catalog: &'static str,
}

const VIEWS: [&str; 4] = ["columns", "schemata", "tables", "views"];

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        VIEWS.iter().map(|v| v.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let listed = self.listing.listed().await;
        let catalog = self.catalog;
        let text = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
        let (fields, columns): (Vec<&str>, Vec<ArrayRef>) = match name {
            "tables" => (
                vec!["table_catalog", "table_schema", "table_name", "table_type"],
                vec![
                    text(listed.iter().map(|_| catalog.to_string()).collect()),
                    text(listed.iter().map(|(s, _, _)| s.clone()).collect()),
                    text(listed.iter().map(|(_, t, _)| t.clone()).collect()),
                    text(listed.iter().map(|_| "BASE TABLE".to_string()).collect()),
                ],
            ),
            "schemata" => {
                let mut schemas: Vec<String> = listed.iter().map(|(s, _, _)| s.clone()).collect();
                schemas.dedup();
                (
                    vec!["catalog_name", "schema_name", "schema_owner"],
                    vec![text(schemas.iter().map(|_| catalog.to_string()).collect()), text(schemas.clone()), text(schemas.iter().map(|_| "sluice".to_string()).collect())],
                )
            }
            "columns" => return Ok(Some(columns_view(catalog, &listed)?)),
            "views" => (vec!["table_catalog", "table_schema", "table_name", "view_definition"], vec![text(vec![]), text(vec![]), text(vec![]), text(vec![])]),
            _ => return Ok(None),
        };
        let schema = Arc::new(ArrowSchema::new(fields.iter().map(|f| Field::new(*f, DataType::Utf8, false)).collect::<Vec<_>>()));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        VIEWS.contains(&name)
    }
}

fn columns_view(catalog: &str, listed: &[(String, String, SchemaRef)]) -> Result<Arc<dyn TableProvider>> {
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut positions = Vec::new();
    for (schema, table, columns) in listed {
        for (i, field) in columns.fields().iter().enumerate() {
            let nullable = if field.is_nullable() { "YES" } else { "NO" };
            rows.push([catalog.into(), schema.clone(), table.clone(), field.name().clone(), pg_type_name(field.data_type()).into(), nullable.into()]);
            positions.push(i as i32 + 1);
        }
    }
    let names = ["table_catalog", "table_schema", "table_name", "column_name", "data_type", "is_nullable"];
    let mut fields: Vec<Field> = names.iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect();
    fields.insert(4, Field::new("ordinal_position", DataType::Int32, false));
    fields.push(Field::new("column_default", DataType::Utf8, true));
    let text = |i: usize| Arc::new(StringArray::from(rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>())) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        text(0),
        text(1),
        text(2),
        text(3),
        Arc::new(Int32Array::from(positions)),
        text(4),
        text(5),
        Arc::new(StringArray::from(vec![None::<&str>; rows.len()])),
    ];
    let schema = Arc::new(ArrowSchema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The name Postgres gives the type a column of this Arrow type is sent as.
pub fn pg_type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Dictionary(_, value) => pg_type_name(value),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => "bytea",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone",
        DataType::Interval(_) | DataType::Duration(_) => "interval",
        DataType::List(_) | DataType::LargeList(_) | DataType::ListView(_) | DataType::FixedSizeList(..) => "ARRAY",
        _ => "USER-DEFINED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn lake_types_have_their_postgres_names() {
        assert_eq!(pg_type_name(&DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))), "timestamp with time zone");
        assert_eq!(pg_type_name(&DataType::Date32), "date");
        assert_eq!(pg_type_name(&DataType::Int64), "bigint");
        assert_eq!(pg_type_name(&DataType::Float64), "double precision");
        assert_eq!(pg_type_name(&DataType::Utf8View), "text");
        assert_eq!(pg_type_name(&DataType::Boolean), "boolean");
        assert_eq!(pg_type_name(&DataType::Binary), "bytea");
    }
}
