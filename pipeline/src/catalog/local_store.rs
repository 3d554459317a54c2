//! The local disk as the lake's object store, with one change: a listing from an
//! offset skips the names at or before it by comparing them, before it looks at
//! any file.
//!
//! delta-rs finds a table's new log entries after every commit by listing
//! `_delta_log` from the version it knows. On S3 that listing starts after the
//! offset (`start-after`); object_store's local file system walks the whole
//! directory and converts every name to a path first, so each commit cost more the
//! more log files the table kept (30 days of them, `delta.logRetentionDuration`).
//! Here the directory's names are read (one `getdents`, no `stat`) and compared
//! as strings, and only the few after the offset are looked at.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Once};

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::logstore::{object_store_factories, ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::DeltaResult;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use url::Url;

/// Makes delta-rs open `file://` tables on [`LocalStore`]; once per process.
pub fn register() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        if let Ok(scheme) = Url::parse("file://") {
            object_store_factories().insert(scheme, Arc::new(LocalStoreFactory));
        }
    });
}

struct LocalStoreFactory;

impl ObjectStoreFactory for LocalStoreFactory {
    fn parse_url_opts(&self, url: &Url, _config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (_, path) = ObjectStoreScheme::parse(url).map_err(object_store::Error::from)?;
        Ok((Arc::new(LocalStore { inner: Arc::new(LocalFileSystem::new()) }), path))
    }
}

/// [`LocalFileSystem`], listing from an offset by name.
#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<LocalFileSystem>,
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LocalStore({})", self.inner)
    }
}

/// The objects in directory `prefix` after `offset`, sorted; `None` where the
/// listing is not that simple (no such directory, a subdirectory, a name that
/// would need escaping), which the plain listing answers.
fn names_after(inner: &LocalFileSystem, prefix: &Path, offset: &Path) -> Option<std::io::Result<Vec<Path>>> {
    let dir = inner.path_to_filesystem(prefix).ok()?;
    let entries = std::fs::read_dir(dir).ok()?;
    let (prefix, offset) = (prefix.as_ref(), offset.as_ref());
    let mut after = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        if !entry.file_type().ok()?.is_file() {
            return None;
        }
        let name = entry.file_name().into_string().ok()?;
        // A file being written (`name#3`) is not an object yet, as in LocalFileSystem.
        if name.split_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) || name.starts_with('.') {
            return None;
        }
        let location = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if location.as_str() > offset {
            after.push(Path::from(location));
        }
    }
    after.sort();
    Some(Ok(after))
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, prefix, offset) = (self.inner.clone(), prefix.cloned(), offset.clone());
        stream::once(async move {
            let listed = match prefix.clone() {
                Some(dir) => {
                    let (store, offset) = (inner.clone(), offset.clone());
                    tokio::task::spawn_blocking(move || names_after(&store, &dir, &offset)).await.ok().flatten()
                }
                None => None,
            };
            match listed {
                None => inner.list_with_offset(prefix.as_ref(), &offset),
                Some(Err(e)) => stream::iter([Err(object_store::Error::Generic { store: "LocalStore", source: Box::new(e) })]).boxed(),
                Some(Ok(locations)) => stream::iter(locations)
                    .then(move |location| {
                        let inner = inner.clone();
                        async move { inner.head(&location).await }
                    })
                    // Deleted since the directory was read: gone, as in LocalFileSystem.
                    .filter(|meta| std::future::ready(!matches!(meta, Err(object_store::Error::NotFound { .. }))))
                    .boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// The same objects as LocalFileSystem's own listing, in order, for offsets
    /// before, between, at and after the names, and beside a file being written.
    #[tokio::test]
    async fn lists_from_an_offset_as_the_local_file_system_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        for name in ["00000000000000000000.json", "00000000000000000001.json", "00000000000000000002.json", "00000000000000000002.checkpoint.parquet", "_last_checkpoint"] {
            root.put(&Path::from(format!("t/_delta_log/{name}")), PutPayload::from_static(b"{}")).await.unwrap();
        }
        std::fs::write(dir.path().join("t/_delta_log/00000000000000000003.json#1"), b"half").unwrap();
        let inner = Arc::new(LocalFileSystem::new());
        let ours = LocalStore { inner: inner.clone() };
        let log = Path::from_filesystem_path(dir.path().join("t/_delta_log")).unwrap();
        for offset in ["", "00000000000000000000.json", "00000000000000000001", "00000000000000000002.json", "_last_checkpoint", "zzz"] {
            let offset = if offset.is_empty() { log.clone() } else { log.clone().join(offset) };
            assert!(matches!(names_after(&inner, &log, &offset), Some(Ok(_))), "by name after {offset}");
            let mut theirs: Vec<ObjectMeta> = inner.list_with_offset(Some(&log), &offset).try_collect().await.unwrap();
            theirs.sort_by(|a, b| a.location.cmp(&b.location));
            let listed: Vec<ObjectMeta> = ours.list_with_offset(Some(&log), &offset).try_collect().await.unwrap();
            assert_eq!(listed, theirs, "after {offset}");
        }
        // A subdirectory: the plain listing answers, recursively.
        root.put(&Path::from("t/_delta_log/sub/x.json"), PutPayload::from_static(b"{}")).await.unwrap();
        let listed: Vec<ObjectMeta> = ours.list_with_offset(Some(&log), &log.clone().join("00000000000000000002.json")).try_collect().await.unwrap();
        assert!(listed.iter().any(|m| m.location.as_ref().ends_with("sub/x.json")), "{listed:?}");
    }

    /// delta-rs opens a local lake's tables on this store.
    #[test]
    fn a_local_lake_is_opened_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::catalog::Lake::open(dir.path().to_str().unwrap(), false, Default::default()).unwrap();
        let store = lake.store().unwrap();
        assert!(format!("{store:?}").contains("LocalStore"), "{store:?}");
    }
}
