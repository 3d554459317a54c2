//! Row-level security, one module for SQL and REST alike: which column ties a
//! table's rows to a user, a trainer or an organisation ([`Ties`], from
//! `policy.toml` or the table's columns), and what an identity may read of it
//! ([`Access`]), given who they teach and where they belong ([`Scope`]).
//!
//! The rules are contract §5 (seed 000's policies): a learner reads their own
//! rows; a trainer also their students' and the rows naming them as trainer; an
//! org admin their organisation's (a row without `org_id` belongs to its user's
//! organisation); an analyst everything. A table with no tie is for analysts only.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::{col, lit, Expr};
use serde::Deserialize;

use sluice_gate::token::{Identity, Role};
use crate::error::{Error, Result};

/// The columns tying a table's rows to people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ties {
    pub user: Option<String>,
    pub trainer: Option<String>,
    pub org: Option<String>,
}

impl Ties {
    fn none(&self) -> bool {
        self.user.is_none() && self.trainer.is_none() && self.org.is_none()
    }
}

/// `policy.toml`: per table (`catalog.schema.table`), the tie columns that differ
/// from the defaults, or `analysts_only`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: BTreeMap<String, Rule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    user: Option<String>,
    trainer: Option<String>,
    org: Option<String>,
    #[serde(default)]
    analysts_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    tables: BTreeMap<String, Rule>,
}

/// The default tie columns, by name.
const DEFAULT_USER: &str = "user_id";
const DEFAULT_TRAINER: &str = "trainer_id";
const DEFAULT_ORG: &str = "org_id";

impl Policy {
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Policy::parse(&text).map_err(|message| Error::Config(format!("policy {}: {message}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (table, rule) in &file.tables {
            if table.split('.').count() != 3 {
                return Err(format!("[tables.\"{table}\"]: name a table as catalog.schema.table"));
            }
            if rule.analysts_only && (rule.user.is_some() || rule.trainer.is_some() || rule.org.is_some()) {
                return Err(format!("[tables.\"{table}\"]: analysts_only with tie columns; choose one"));
            }
        }
        Ok(Policy { rules: file.tables })
    }

    /// The tables the file names, for `sluice validate`.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    /// The ties of `table`: the file's, else the default columns it has. A column
    /// the file names must exist and hold strings.
    pub fn ties(&self, table: &str, schema: &Schema) -> std::result::Result<Ties, String> {
        let rule = self.rules.get(table);
        if rule.is_some_and(|r| r.analysts_only) {
            return Ok(Ties::default());
        }
        let pick = |named: Option<&Option<String>>, default: &str| -> std::result::Result<Option<String>, String> {
            match named.and_then(|n| n.as_deref()) {
                Some(column) => match schema.field_with_name(column) {
                    Ok(f) if is_text(f.data_type()) => Ok(Some(column.to_string())),
                    Ok(f) => Err(format!("{table}: tie column `{column}` is {}, not a string", f.data_type())),
                    Err(_) => Err(format!("{table}: no column `{column}` to tie rows by")),
                },
                None => Ok(schema.field_with_name(default).ok().filter(|f| is_text(f.data_type())).map(|_| default.to_string())),
            }
        };
        Ok(Ties {
            user: pick(rule.map(|r| &r.user), DEFAULT_USER)?,
            trainer: pick(rule.map(|r| &r.trainer), DEFAULT_TRAINER)?,
            org: pick(rule.map(|r| &r.org), DEFAULT_ORG)?,
        })
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if is_text(v))
}

/// Who an identity teaches and where it belongs, read from the directory mirrors
/// (`services/directory/teaching_assignments` and `users`) at the statement's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The trainer's students.
    pub students: Vec<String>,
    /// The identity's organisation (by the users mirror).
    pub org: Option<String>,
    /// Every user of that organisation.
    pub members: Vec<String>,
}

/// What an identity may read of one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Every row (analysts).
    All,
    /// The rows where this holds (null counts as false).
    Rows(Expr),
    /// Nothing: the table does not exist for this identity.
    Hidden,
}

/// The rule of contract §5 for `identity` on a table tied by `ties`.
pub fn access(identity: &Identity, ties: &Ties, scope: &Scope) -> Access {
    if identity.role == Role::Analyst {
        return Access::All;
    }
    if ties.none() {
        return Access::Hidden;
    }
    let me = identity.user.as_str();
    let mut any: Vec<Expr> = Vec::new();
    match identity.role {
        Role::Learner => {
            let Some(user) = &ties.user else { return Access::Hidden };
            any.push(col_eq(user, me));
        }
        Role::Trainer => {
            if ties.user.is_none() && ties.trainer.is_none() {
                return Access::Hidden;
            }
            if let Some(user) = &ties.user {
                let mut mine = vec![me.to_string()];
                mine.extend(scope.students.iter().cloned());
                any.push(col_in(user, &mine));
            }
            if let Some(trainer) = &ties.trainer {
                any.push(col_eq(trainer, me));
            }
        }
        Role::OrgAdmin => {
            let (Some(org), members) = (&scope.org, &scope.members) else {
                return Access::Rows(lit(false));
            };
            match (&ties.org, &ties.user) {
                (Some(org_col), Some(user)) => {
                    any.push(col_eq(org_col, org));
                    any.push(col(quoted(org_col)).is_null().and(col_in(user, members)));
                }
                (Some(org_col), None) => any.push(col_eq(org_col, org)),
                (None, Some(user)) => any.push(col_in(user, members)),
                (None, None) => {}
            }
            if let Some(trainer) = &ties.trainer {
                any.push(col_in(trainer, members));
            }
        }
        Role::Analyst => unreachable!("analysts returned above"),
    }
    let filter = any.into_iter().reduce(Expr::or).unwrap_or(lit(false));
    Access::Rows(filter)
}

/// Column names as identifiers, so `col` never parses a dot as a qualifier.
fn quoted(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

fn col_eq(column: &str, value: &str) -> Expr {
    col(quoted(column)).eq(lit(value.to_string()))
}

fn col_in(column: &str, values: &[String]) -> Expr {
    if values.is_empty() {
        return lit(false);
    }
    col(quoted(column)).in_list(values.iter().map(|v| lit(v.clone())).collect(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn schema(columns: &[&str]) -> Schema {
        Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>())
    }

    fn who(user: &str, role: Role) -> Identity {
        Identity { user: user.into(), role }
    }

    #[test]
    fn ties_default_to_the_columns_and_the_file_overrides_them() {
        let policy = Policy::parse(
            r#"
            [tables."services.directory.teaching_assignments"]
            user = "student_id"
            [tables."a.b.c"]
            analysts_only = true
            "#,
        )
        .unwrap();
        let assignments = schema(&["trainer_id", "student_id"]);
        let ties = policy.ties("services.directory.teaching_assignments", &assignments).unwrap();
        assert_eq!(ties, Ties { user: Some("student_id".into()), trainer: Some("trainer_id".into()), org: None });
        assert_eq!(policy.ties("x.y.z", &schema(&["user_id", "org_id", "n"])).unwrap().org.as_deref(), Some("org_id"));
        assert_eq!(policy.ties("a.b.c", &schema(&["user_id"])).unwrap(), Ties::default());
        let missing = policy.ties("services.directory.teaching_assignments", &schema(&["trainer_id"])).unwrap_err();
        assert!(missing.contains("no column `student_id`"), "{missing}");
        assert!(Policy::parse("[tables.\"a.b\"]\nuser = \"x\"").unwrap_err().contains("catalog.schema.table"));
        assert!(Policy::parse("[tables.\"a.b.c\"]\nusr = \"x\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn each_role_gets_the_contracts_rows_and_no_tie_means_analysts_only() {
        let ties = Ties { user: Some("user_id".into()), trainer: None, org: Some("org_id".into()) };
        let scope = Scope { students: vec!["s1".into()], org: Some("o1".into()), members: vec!["u1".into(), "u2".into()] };
        assert_eq!(access(&who("a", Role::Analyst), &Ties::default(), &scope), Access::All);
        assert_eq!(access(&who("u1", Role::Learner), &Ties::default(), &scope), Access::Hidden);
        assert_eq!(access(&who("u1", Role::Learner), &ties, &scope), Access::Rows(col("user_id").eq(lit("u1"))));
        let trainer_only = Ties { trainer: Some("trainer_id".into()), ..Ties::default() };
        assert_eq!(access(&who("u1", Role::Learner), &trainer_only, &scope), Access::Hidden);
        assert_eq!(access(&who("t1", Role::Trainer), &trainer_only, &scope), Access::Rows(col("trainer_id").eq(lit("t1"))));
        let Access::Rows(trainer) = access(&who("t1", Role::Trainer), &ties, &scope) else { panic!() };
        assert_eq!(trainer, col("user_id").in_list(vec![lit("t1"), lit("s1")], false));
        let Access::Rows(admin) = access(&who("u1", Role::OrgAdmin), &ties, &scope) else { panic!() };
        let members = col("user_id").in_list(vec![lit("u1"), lit("u2")], false);
        assert_eq!(admin, col("org_id").eq(lit("o1")).or(col("org_id").is_null().and(members)));
        let homeless = Scope::default();
        assert_eq!(access(&who("u9", Role::OrgAdmin), &ties, &homeless), Access::Rows(lit(false)));
    }
}
