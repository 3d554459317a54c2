//! JSON-lines files as a bounded source: `DIR/<topic>/<partition>.jsonl`, or
//! `DIR/<topic>.jsonl` for partition 0. `_offset` is the 0-based line number.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{PartitionId, RawBatch, RawMessage, Source};
use crate::error::{Error, Result};

/// Reads every file in a fixed round: files sorted by (topic, partition), each visit
/// taking the next `batch_size` lines. The order is deterministic, so a run's
/// watermarks, and with them which events are late, do not depend on timing.
pub struct FileSource {
    files: Vec<PartitionFile>,
    total_bytes: u64,
    next: usize,
    batch_size: usize,
}

struct PartitionFile {
    id: PartitionId,
    path: PathBuf,
    reader: BufReader<File>,
    next_offset: i64,
    finished: bool,
}

impl FileSource {
    /// Finds the partition files under `dir` for the topics `known` accepts.
    pub fn open(dir: &Path, batch_size: usize, known: impl Fn(&str) -> bool) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let mut found = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let name = file_name(&path);
            if path.is_dir() {
                let files = std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
                for file in files {
                    let file = file.map_err(|e| Error::io(&path, e))?.path();
                    if let Some(stem) = file_name(&file).strip_suffix(".jsonl") {
                        let partition = stem.parse::<i32>().map_err(|_| {
                            Error::Input(format!(
                                "{}: a partition file is named <number>.jsonl",
                                file.display()
                            ))
                        })?;
                        found.push((name.clone(), partition, file));
                    }
                }
            } else if let Some(topic) = name.strip_suffix(".jsonl") {
                found.push((topic.to_string(), 0, path.clone()));
            }
        }
        let mut files = Vec::new();
        for (topic, partition, path) in found {
            if !known(&topic) {
                return Err(Error::Input(format!(
                    "{}: no schema for topic `{topic}` (add schemas/{topic}.toml or remove the file)",
                    path.display()
                )));
            }
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            files.push(PartitionFile {
                id: PartitionId { topic: Arc::from(topic.as_str()), partition },
                path,
                reader: BufReader::with_capacity(1 << 20, file),
                next_offset: 0,
                finished: false,
            });
        }
        files.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = files.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::Input(format!(
                "{} and {} are the same topic-partition",
                w[0].path.display(),
                w[1].path.display()
            )));
        }
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no input files (expected <topic>/<partition>.jsonl or <topic>.jsonl)",
                dir.display()
            )));
        }
        let total_bytes = files.iter().filter_map(|f| std::fs::metadata(&f.path).ok()).map(|m| m.len()).sum();
        Ok(FileSource { files, total_bytes, next: 0, batch_size })
    }

    /// The size of all input files, for progress.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl PartitionFile {
    fn read_batch(&mut self, batch_size: usize) -> Result<RawBatch> {
        let mut data = Vec::with_capacity(batch_size * 256);
        let mut messages = Vec::with_capacity(batch_size);
        let mut lines = 0;
        while lines < batch_size {
            let start = data.len();
            let n = self.reader.read_until(b'\n', &mut data).map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                break;
            }
            lines += 1;
            let offset = self.next_offset;
            self.next_offset += 1;
            let mut end = data.len();
            while end > start && matches!(data[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            data.truncate(end);
            let line = &data[start..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are no messages, but keep their line numbers
            }
            let payload = (line != b"null").then_some(start..end);
            messages.push(RawMessage { offset, payload, timestamp: None });
        }
        // Finished as soon as the last line is read, not one visit later.
        self.finished = self.reader.fill_buf().map_err(|e| Error::io(&self.path, e))?.is_empty();
        Ok(RawBatch {
            partition: self.id.clone(),
            ingested_at: crate::time::now_micros(),
            data,
            messages,
            next_offset: self.next_offset,
            end_of_partition: self.finished,
        })
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn partitions(&self) -> Vec<PartitionId> {
        self.files.iter().map(|f| f.id.clone()).collect()
    }

    /// Skips each file's lines before its position, and starts the round where the
    /// uninterrupted run would be: at the first file with the fewest visits made.
    fn seek(&mut self, positions: &BTreeMap<PartitionId, i64>) -> Result<()> {
        let mut line = Vec::new();
        for file in &mut self.files {
            let Some(&position) = positions.get(&file.id) else { continue };
            while file.next_offset < position {
                line.clear();
                if file.reader.read_until(b'\n', &mut line).map_err(|e| Error::io(&file.path, e))? == 0 {
                    return Err(Error::Input(format!(
                        "{}: the checkpoint is at line {position}, the file has {} lines: was it changed?",
                        file.path.display(),
                        file.next_offset
                    )));
                }
                file.next_offset += 1;
            }
            file.finished = file.reader.fill_buf().map_err(|e| Error::io(&file.path, e))?.is_empty();
        }
        let visits = |f: &PartitionFile| f.next_offset / self.batch_size as i64;
        self.next = (0..self.files.len())
            .filter(|&i| !self.files[i].finished)
            .min_by_key(|&i| (visits(&self.files[i]), i))
            .unwrap_or(0);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        let n = self.files.len();
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % n;
            let file = &mut self.files[i];
            if !file.finished {
                return file.read_batch(self.batch_size).map(Some);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(source: &mut FileSource) -> Vec<(String, i32, Vec<i64>, bool)> {
        let mut out = Vec::new();
        while let Some(b) = source.next_batch().await.unwrap() {
            let offsets = b.messages.iter().map(|m| m.offset).collect();
            out.push((b.partition.topic.to_string(), b.partition.partition, offsets, b.end_of_partition));
        }
        out
    }

    #[tokio::test]
    async fn reads_partitions_in_rounds_and_finishes_on_the_last_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/1.jsonl"), "{}\n{}\n{}\n{}\n").unwrap();
        std::fs::write(dir.path().join("b/0.jsonl"), "{}\n\n{}").unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "null\n").unwrap();
        let mut source = FileSource::open(dir.path(), 2, |_| true).unwrap();
        let got = drain(&mut source).await;
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, vec![0], true),
                ("b".into(), 0, vec![0], false), // line 1 is blank
                ("b".into(), 1, vec![0, 1], false),
                ("b".into(), 0, vec![2], true),
                ("b".into(), 1, vec![2, 3], true),
            ]
        );
    }

    /// A source reopened at the positions of any batch goes on exactly as the
    /// uninterrupted source did: same batches, same partition order.
    #[tokio::test]
    async fn seeking_to_a_checkpoint_continues_the_same_rounds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/0.jsonl"), "{}\n".repeat(7)).unwrap();
        std::fs::write(dir.path().join("b/1.jsonl"), "{}\n".repeat(3)).unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{}\n\n{}\n{}\n{}\n\n").unwrap();
        let whole = drain(&mut FileSource::open(dir.path(), 2, |_| true).unwrap()).await;
        for stop in 0..whole.len() {
            let mut first = FileSource::open(dir.path(), 2, |_| true).unwrap();
            let mut positions = BTreeMap::new();
            let mut seen = Vec::new();
            for _ in 0..stop {
                let b = first.next_batch().await.unwrap().unwrap();
                positions.insert(b.partition.clone(), b.next_offset);
                seen.push((b.partition.topic.to_string(), b.partition.partition, b.messages.iter().map(|m| m.offset).collect(), b.end_of_partition));
            }
            let mut resumed = FileSource::open(dir.path(), 2, |_| true).unwrap();
            resumed.seek(&positions).unwrap();
            seen.extend(drain(&mut resumed).await);
            assert_eq!(seen, whole, "resumed after {stop} batches");
        }
    }

    #[test]
    fn unknown_topics_and_bad_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.jsonl"), "{}\n").unwrap();
        let err = FileSource::open(dir.path(), 10, |_| false).err().unwrap().to_string();
        assert!(err.contains("no schema for topic `x`"), "{err}");
        std::fs::create_dir(dir.path().join("y")).unwrap();
        std::fs::write(dir.path().join("y/first.jsonl"), "{}\n").unwrap();
        let err = FileSource::open(dir.path(), 10, |_| true).err().unwrap().to_string();
        assert!(err.contains("<number>.jsonl"), "{err}");
    }
}
