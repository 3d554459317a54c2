//! The lake as a catalog: every Delta table under the lake root, named
//! `catalog.schema.table` after its path (`integration/api_gateway/request_logs` is
//! `integration.api_gateway.request_logs`).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::prelude::SessionContext;
use url::Url;

use crate::error::{Error, Result};

/// A table's place in the lake: three path segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TablePath(String);

impl TablePath {
    pub fn new(path: &str) -> std::result::Result<Self, String> {
        let segments: Vec<&str> = path.split('/').collect();
        let valid = |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if segments.len() != 3 || !segments.iter().all(valid) {
            return Err(format!(
                "`{path}` is not a table path: a table lives at <catalog>/<schema>/<table>, each of letters, digits and _"
            ));
        }
        Ok(TablePath(path.to_string()))
    }

    /// From a path relative to the `sql/` directory, without extension.
    pub fn from_relative(relative: &Path) -> std::result::Result<Self, String> {
        let parts: Vec<String> = relative
            .components()
            .map(|c| match c {
                Component::Normal(s) => s.to_string_lossy().into_owned(),
                _ => String::new(),
            })
            .collect();
        Self::new(&parts.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `catalog.schema.table`.
    pub fn sql_name(&self) -> String {
        self.0.replace('/', ".")
    }

    pub fn parts(&self) -> [&str; 3] {
        let mut it = self.0.split('/');
        [it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default()]
    }
}

impl fmt::Display for TablePath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the lake lives: a local directory or an object-store URL.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
}

impl Lake {
    /// A local path (created if missing) or a URL such as `s3://bucket/lake`.
    pub fn open(location: &str, create: bool) -> Result<Self> {
        let root = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = PathBuf::from(location);
                if create {
                    std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                } else if !path.is_dir() {
                    return Err(Error::Config(format!("lake {location}: no such directory")));
                }
                let path = path.canonicalize().map_err(|e| Error::io(&path, e))?;
                Url::from_directory_path(&path)
                    .map_err(|()| Error::Config(format!("lake {location}: not an absolute path")))?
            }
        };
        let root = if root.path().ends_with('/') { root } else { Url::parse(&format!("{root}/")).map_err(|e| Error::Config(e.to_string()))? };
        Ok(Lake { root })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn table_url(&self, table: &TablePath) -> Result<Url> {
        self.root
            .join(&format!("{}/", table.as_str()))
            .map_err(|e| Error::Config(format!("table {table}: {e}")))
    }

    /// Every table in a local lake: directories at depth three with a `_delta_log`.
    pub fn tables(&self) -> Result<Vec<TablePath>> {
        let root = self
            .root
            .to_file_path()
            .map_err(|()| Error::Config(format!("listing tables of {} needs a local lake", self.root)))?;
        let mut found = Vec::new();
        for a in subdirs(&root)? {
            for b in subdirs(&a)? {
                for c in subdirs(&b)? {
                    if c.join("_delta_log").is_dir() {
                        if let Ok(relative) = c.strip_prefix(&root) {
                            if let Ok(table) = TablePath::from_relative(relative) {
                                found.push(table);
                            }
                        }
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// A DataFusion session with every table of the lake registered.
    pub async fn session(&self) -> Result<SessionContext> {
        let ctx = SessionContext::new();
        for table in self.tables()? {
            let url = self.table_url(&table)?;
            let delta = deltalake::open_table(url).await.map_err(|e| Error::delta(table.as_str(), e))?;
            delta.update_datafusion_session(&ctx.state()).map_err(|e| Error::delta(table.as_str(), e))?;
            let provider = delta.table_provider().await.map_err(|e| Error::delta(table.as_str(), e.into()))?;
            let [catalog_name, schema_name, table_name] = table.parts();
            let catalog = match ctx.catalog(catalog_name) {
                Some(c) => c,
                None => {
                    let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                    ctx.register_catalog(catalog_name, c.clone());
                    c
                }
            };
            let schema = match catalog.schema(schema_name) {
                Some(s) => s,
                None => {
                    let s = Arc::new(MemorySchemaProvider::new());
                    catalog.register_schema(schema_name, s.clone())?;
                    s
                }
            };
            schema.register_table(table_name.to_string(), provider)?;
        }
        Ok(ctx)
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !file_name_starts_with(&path, '_') && !file_name_starts_with(&path, '.') {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

fn file_name_starts_with(path: &Path, c: char) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_paths_have_three_plain_segments() {
        let t = TablePath::new("integration/api_gateway/request_logs").unwrap();
        assert_eq!(t.sql_name(), "integration.api_gateway.request_logs");
        assert_eq!(t.parts(), ["integration", "api_gateway", "request_logs"]);
        assert!(TablePath::new("a/b").is_err());
        assert!(TablePath::new("a/b/c-d").is_err());
        assert!(TablePath::new("a//c").is_err());
    }
}
