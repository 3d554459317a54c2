//! Who writes a lake's tables: one pipeline, or the shards of one consumer group.
//!
//! `_sluice/writers.json` says which; the first run writes it. A run of the other
//! kind, or a group of another name or shard count, refuses: each writes under its
//! own `txn` app ids, so nothing else would stop both from writing every row.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::storage::create_or_get;
use super::Lake;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Writers {
    /// `sluice run` without `--group`.
    Pipeline { name: String },
    /// `sluice run --group NAME`: the tables split into `shards`, each written by
    /// the instance the consumer group gives it to.
    Group { name: String, shards: u32 },
}

/// The pipeline that shard `index` of group `group` is: its directory under
/// `_sluice/` and the prefix of its tables' `txn` app ids.
pub fn shard_pipeline(group: &str, index: u32) -> String {
    format!("{group}/shard-{index}")
}

impl Writers {
    /// Every pipeline these writers commit as.
    pub fn pipelines(&self) -> Vec<String> {
        match self {
            Writers::Pipeline { name } => vec![name.clone()],
            Writers::Group { name, shards } => (0..*shards).map(|i| shard_pipeline(name, i)).collect(),
        }
    }

    /// The writers a lake records, if any run wrote it since they were recorded.
    pub async fn of(lake: &Lake) -> Result<Option<Writers>> {
        let (store, url) = writers_store(lake)?;
        let found = match store.get(&Path::from("writers.json")).await {
            Ok(found) => found.bytes().await.map_err(|e| Error::Config(format!("reading {url}writers.json: {e}")))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::Config(format!("reading {url}writers.json: {e}"))),
        };
        serde_json::from_slice(&found).map(Some).map_err(|e| Error::Config(format!("{url}writers.json does not parse: {e}")))
    }

    fn describe(&self) -> String {
        match self {
            Writers::Pipeline { name } => format!("one pipeline (`{name}`, sluice run without --group)"),
            Writers::Group { name, shards } => format!("the consumer group `{name}` in {shards} shards (sluice run --group {name})"),
        }
    }

    /// Records these writers in the lake, or refuses if it has others.
    pub async fn claim(&self, lake: &Lake) -> Result<()> {
        let (store, url) = writers_store(lake)?;
        let path = Path::from("writers.json");
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("writers.json: {e}")))?;
        let found = match create_or_get(store.as_ref(), &path, body).await {
            Ok(None) => return Ok(()),
            Ok(Some(found)) => found,
            Err(e) => return Err(Error::Config(format!("writing {url}writers.json: {e}"))),
        };
        let theirs: Writers = serde_json::from_slice(&found).map_err(|e| Error::Config(format!("{url}writers.json does not parse: {e}")))?;
        if theirs == *self {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the lake {} is written by {}, and this run would be {}: both would write every table. \
             Run it the same way, or give it another lake",
            lake.root(),
            theirs.describe(),
            self.describe()
        )))
    }
}

fn writers_store(lake: &Lake) -> Result<(std::sync::Arc<dyn ObjectStore>, url::Url)> {
    let url = lake.root().join("_sluice/").map_err(|e| Error::Internal(format!("the lake's _sluice directory: {e}")))?;
    Ok((lake.store_at(url.clone())?, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lake_takes_one_kind_of_writer() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let group = Writers::Group { name: "g".into(), shards: 6 };
        assert_eq!(Writers::of(&lake).await.unwrap(), None);
        group.claim(&lake).await.unwrap();
        group.claim(&lake).await.unwrap();
        assert_eq!(Writers::of(&lake).await.unwrap(), Some(group.clone()));
        for other in [Writers::Pipeline { name: "sluice".into() }, Writers::Group { name: "g".into(), shards: 3 }, Writers::Group { name: "h".into(), shards: 6 }] {
            let refused = other.claim(&lake).await.expect_err("another kind of writer").to_string();
            assert!(refused.contains("consumer group `g` in 6 shards") && refused.contains("both would write every table"), "{refused}");
        }
        assert_eq!(group.pipelines(), (0..6).map(|i| format!("g/shard-{i}")).collect::<Vec<_>>());
    }
}
