//! The `sql/` directory: each `.sql` file defines the lake table at its path.

use std::path::{Path, PathBuf};

use crate::catalog::TablePath;
use crate::error::{Error, Result};

/// One `.sql` file of the `sql/` directory.
#[derive(Debug, Clone)]
pub struct SqlFile {
    pub path: PathBuf,
    pub table: TablePath,
    pub sql: String,
}

/// Every `.sql` file under `dir`, each defining the table at its relative path.
pub fn load_sql_dir(dir: &Path) -> Result<Vec<SqlFile>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.table.cmp(&b.table));
    if files.is_empty() {
        return Err(Error::Config(format!("{}: no .sql files", dir.display())));
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SqlFile>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "sql") {
            let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let table = TablePath::from_relative(&relative).map_err(|message| Error::Sql { path: path.clone(), message })?;
            let sql = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            out.push(SqlFile { path, table, sql });
        }
    }
    Ok(())
}
