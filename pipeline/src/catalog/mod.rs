//! The lake as a catalog: every Delta table under the lake root, named
//! `catalog.schema.table` after its path (`integration/api_gateway/request_logs` is
//! `integration.api_gateway.request_logs`).

pub mod lease;
pub mod local_store;
pub mod writers;
pub mod storage;

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::prelude::SessionContext;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

pub use storage::StorageOptions;

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

/// Where the lake lives: a local directory or an object-store URL, with the
/// options its store clients are built with.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
    options: StorageOptions,
}

/// URL schemes of the object stores Sluice can write (deltalake's `s3` and `azure`).
const STORE_SCHEMES: [&str; 8] = ["file", "s3", "s3a", "az", "azure", "adl", "abfs", "abfss"];

impl Lake {
    /// A local path (created if missing, with `create`) or a URL: `file://`,
    /// `s3://bucket/prefix`, `s3a://...`, `az://container/prefix`,
    /// `abfss://container@account.dfs.core.windows.net/prefix`.
    pub fn open(location: &str, create: bool, options: StorageOptions) -> Result<Self> {
        local_store::register();
        let root = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => {
                if !STORE_SCHEMES.contains(&url.scheme()) {
                    return Err(Error::Config(format!(
                        "lake {location}: unknown scheme `{}://` (use a path, file://, s3://, s3a://, az:// or abfss://)",
                        url.scheme()
                    )));
                }
                if url.scheme() != "file" && url.host_str().unwrap_or_default().is_empty() {
                    return Err(Error::Config(format!("lake {location}: no bucket or container in the URL")));
                }
                if let Ok(dir) = url.to_file_path() {
                    if create {
                        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                    } else if !dir.is_dir() {
                        return Err(Error::Config(format!("lake {location}: no such directory")));
                    }
                }
                url
            }
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
        Ok(Lake { root, options })
    }

    /// Opens the lake and checks its store answers (and, for a writer, commits
    /// atomically): a missing bucket, bad credentials or an unreachable endpoint is
    /// one line naming the lake.
    pub async fn connect(location: &str, write: bool, options: StorageOptions) -> Result<Self> {
        let lake = Lake::open(location, write, options)?;
        storage::probe(&lake.root, lake.store()?.as_ref(), write).await?;
        Ok(lake)
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    pub fn table_url(&self, table: &TablePath) -> Result<Url> {
        self.root
            .join(&format!("{}/", table.as_str()))
            .map_err(|e| Error::Config(format!("table {table}: {e}")))
    }

    /// A Delta table builder for the URL `url` under this lake, with its options.
    pub fn builder(&self, url: Url) -> Result<deltalake::DeltaTableBuilder> {
        let at = url.to_string();
        Ok(deltalake::DeltaTableBuilder::from_url(url)
            .map_err(|e| Error::delta(at, e))?
            .with_storage_options(self.options.map().clone()))
    }

    /// The object store rooted at `url` (the lake, or a directory in it).
    pub fn store_at(&self, url: Url) -> Result<Arc<dyn ObjectStore>> {
        let at = url.to_string();
        let log_store = self.builder(url)?.build_storage().map_err(|e| Error::delta(at, e))?;
        Ok(log_store.object_store(None))
    }

    /// The object store rooted at the lake.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        self.store_at(self.root.clone())
    }

    /// A table of the lake, at its latest version.
    pub async fn load_table(&self, table: &TablePath) -> Result<deltalake::DeltaTable> {
        self.builder(self.table_url(table)?)?.load().await.map_err(|e| Error::delta(table.as_str(), e))
    }

    /// Every table in the lake: prefixes at depth three with a `_delta_log`.
    pub async fn tables(&self) -> Result<Vec<TablePath>> {
        let store = self.store()?;
        let fail = |e: object_store::Error| Error::Storage { url: self.root.to_string(), problem: storage::redact(&e.to_string()) };
        let mut level: Vec<Option<ObjectPath>> = vec![None];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &level {
                let listing = store.list_with_delimiter(prefix.as_ref()).await.map_err(fail)?;
                let visible = |p: &ObjectPath| p.filename().is_some_and(|n| !n.starts_with('_') && !n.starts_with('.'));
                next.extend(listing.common_prefixes.into_iter().filter(visible).map(Some));
            }
            level = next;
        }
        let mut found = Vec::new();
        for prefix in level.into_iter().flatten() {
            let log = prefix.clone().join("_delta_log");
            let mut entries = store.list(Some(&log));
            use futures::StreamExt;
            if let Some(entry) = entries.next().await {
                entry.map_err(fail)?;
                if let Ok(table) = TablePath::new(prefix.as_ref()) {
                    found.push(table);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// A DataFusion session with every table of the lake registered.
    pub async fn session(&self) -> Result<SessionContext> {
        self.session_of(&self.tables().await?).await
    }

    /// A DataFusion session with `tables` registered (each must exist).
    pub async fn session_of(&self, tables: &[TablePath]) -> Result<SessionContext> {
        let ctx = SessionContext::new();
        for table in tables {
            let delta = self.load_table(table).await?;
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

    #[test]
    fn lake_urls_of_every_store_are_taken_and_others_refused() {
        let options = StorageOptions::default();
        for url in ["s3://lake/x", "s3a://lake/x/y", "az://lake/x", "abfss://lake@account.dfs.core.windows.net/x", "s3://lake"] {
            let lake = Lake::open(url, false, options.clone()).unwrap();
            assert!(lake.root().as_str().ends_with('/'), "{url}: the root is a directory");
            let table = lake.table_url(&TablePath::new("a/b/c").unwrap()).unwrap();
            assert!(table.as_str().starts_with(url) && table.as_str().ends_with("a/b/c/"), "{url}: {table}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file_url = url::Url::from_directory_path(dir.path()).unwrap();
        assert_eq!(Lake::open(file_url.as_str(), false, options.clone()).unwrap().root(), &file_url);
        let unknown = Lake::open("gs://lake/x", false, options.clone()).unwrap_err().to_string();
        assert!(unknown.contains("unknown scheme `gs://`"), "{unknown}");
        let bucketless = Lake::open("s3:///x", false, options.clone()).unwrap_err().to_string();
        assert!(bucketless.contains("no bucket"), "{bucketless}");
        let missing = Lake::open(dir.path().join("nope").to_str().unwrap(), false, options).unwrap_err().to_string();
        assert!(missing.contains("no such directory"), "{missing}");
    }
}
