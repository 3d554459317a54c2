//! JSON-lines files as a bounded source: `DIR/<topic>/<partition>.jsonl`, or
//! `DIR/<topic>.jsonl` for partition 0. `_offset` is the 0-based line number.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
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

/// Bytes read from a file at a time, straight into the batch's buffer (a buffered
/// reader would copy every byte once more).
const CHUNK: usize = 256 << 10;

struct PartitionFile {
    id: PartitionId,
    reader: ChunkReader,
    /// Bytes read past the last line handed out: where the next batch starts.
    carry: Vec<u8>,
    next_offset: i64,
}

/// A file read in chunks onto the end of the caller's buffer.
struct ChunkReader {
    path: PathBuf,
    file: File,
    /// Bytes per read: [`CHUNK`] (a few in tests, to split lines across reads).
    chunk: usize,
    /// The file has nothing more to read.
    at_end: bool,
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
                reader: ChunkReader { path, file, chunk: CHUNK, at_end: false },
                carry: Vec::new(),
                next_offset: 0,
            });
        }
        files.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = files.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::Input(format!(
                "{} and {} are the same topic-partition",
                w[0].reader.path.display(),
                w[1].reader.path.display()
            )));
        }
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no input files (expected <topic>/<partition>.jsonl or <topic>.jsonl)",
                dir.display()
            )));
        }
        let total_bytes = files.iter().filter_map(|f| std::fs::metadata(&f.reader.path).ok()).map(|m| m.len()).sum();
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

impl ChunkReader {
    /// Appends up to a chunk of the file to `buf`; false once the file has no more.
    fn read_more(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        if self.at_end {
            return Ok(false);
        }
        buf.reserve(self.chunk);
        let n = (&mut self.file).take(self.chunk as u64).read_to_end(buf).map_err(|e| Error::io(&self.path, e))?;
        // `read_to_end` stops short of the chunk only at the end of the file.
        self.at_end = n < self.chunk;
        Ok(n > 0)
    }

    /// The end of the line starting at `start` in `buf` (its newline, or the end of
    /// `buf` for a last line without one), reading onto `buf` until the line is
    /// whole; `None` when no line starts there: the file is done.
    fn line_end(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<Option<usize>> {
        let mut scanned = start;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &buf[scanned..]) {
                return Ok(Some(scanned + i));
            }
            scanned = buf.len();
            if !self.read_more(buf)? {
                return Ok((start < buf.len()).then_some(buf.len()));
            }
        }
    }
}

impl PartitionFile {
    /// Every line is handed out; known as soon as the last one is, not one visit
    /// later, because every batch and seek ends with [`read_ahead`](Self::read_ahead).
    fn finished(&self) -> bool {
        self.reader.at_end && self.carry.is_empty()
    }

    /// Reads the next chunk when nothing is carried, so that [`finished`](Self::finished) knows.
    fn read_ahead(&mut self) -> Result<()> {
        if self.carry.is_empty() {
            self.reader.read_more(&mut self.carry)?;
        }
        Ok(())
    }

    fn read_batch(&mut self, batch_size: usize) -> Result<RawBatch> {
        // Lines stay where they were read, newlines between them; a message is its range.
        let mut data = std::mem::take(&mut self.carry);
        data.reserve(batch_size * 256);
        let mut messages = Vec::with_capacity(batch_size);
        let (mut lines, mut start) = (0, 0);
        while lines < batch_size {
            let Some(end) = self.reader.line_end(&mut data, start)? else { break };
            lines += 1;
            let offset = self.next_offset;
            self.next_offset += 1;
            let line_start = start;
            let mut line_end = end;
            while line_end > line_start && data[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            start = (end + 1).min(data.len());
            let line = &data[line_start..line_end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are no messages, but keep their line numbers
            }
            let payload = (line != b"null").then_some(line_start..line_end);
            messages.push(RawMessage { offset, payload, timestamp: None });
        }
        self.carry = data[start..].to_vec();
        data.truncate(start);
        self.read_ahead()?;
        Ok(RawBatch {
            partition: self.id.clone(),
            ingested_at: crate::time::now_micros(),
            data,
            messages,
            next_offset: self.next_offset,
            end_of_partition: self.finished(),
        })
    }

    /// Passes over lines until `next_offset` is `position`.
    fn skip_to(&mut self, position: i64) -> Result<()> {
        let mut start = 0;
        while self.next_offset < position {
            // The lines passed over are dropped a chunk's worth at a time.
            if start >= self.reader.chunk {
                self.carry.drain(..start);
                start = 0;
            }
            let Some(end) = self.reader.line_end(&mut self.carry, start)? else {
                return Err(Error::Input(format!(
                    "{}: the checkpoint is at line {position}, the file has {} lines: was it changed?",
                    self.reader.path.display(),
                    self.next_offset
                )));
            };
            start = (end + 1).min(self.carry.len());
            self.next_offset += 1;
        }
        self.carry.drain(..start);
        self.read_ahead()
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
        for file in &mut self.files {
            if let Some(&position) = positions.get(&file.id) {
                file.skip_to(position)?;
            }
        }
        let visits = |f: &PartitionFile| f.next_offset / self.batch_size as i64;
        self.next = (0..self.files.len())
            .filter(|&i| !self.files[i].finished())
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
            if !file.finished() {
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

    /// Lines split across reads come out whole and in place, whatever the read size,
    /// from the start or resumed at any line.
    #[tokio::test]
    async fn lines_across_reads_come_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"a\":1}\r\n\n{\"bb\":22}\nnull\n   \n{\"ccc\":333}";
        std::fs::write(dir.path().join("t.jsonl"), text).unwrap();
        // Line numbers and payloads, from the text by hand: blank lines are no
        // messages, `null` is a tombstone, the last line has no newline.
        let expected = [(0, Some("{\"a\":1}")), (2, Some("{\"bb\":22}")), (3, None), (5, Some("{\"ccc\":333}"))];
        let expected: Vec<(i64, Option<String>)> = expected.iter().map(|(o, p)| (*o, p.map(String::from))).collect();
        for chunk in 1..=12 {
            for batch_size in 1..=4 {
                for position in 0..=6 {
                    let mut source = FileSource::open(dir.path(), batch_size, |_| true).unwrap();
                    source.files[0].reader.chunk = chunk;
                    let id = source.files[0].id.clone();
                    source.seek(&BTreeMap::from([(id, position)])).unwrap();
                    let (mut got, mut last) = (Vec::new(), None);
                    while let Some(b) = source.next_batch().await.unwrap() {
                        for m in &b.messages {
                            got.push((m.offset, b.payload(m).map(|p| String::from_utf8(p.to_vec()).unwrap())));
                        }
                        last = Some((b.next_offset, b.end_of_partition));
                    }
                    let want: Vec<_> = expected.iter().filter(|(o, _)| *o >= position).cloned().collect();
                    assert_eq!(got, want, "chunk {chunk}, batch {batch_size}, from line {position}");
                    assert_eq!(last, (position < 6).then_some((6, true)), "chunk {chunk}, batch {batch_size}, from line {position}");
                }
            }
            let mut source = FileSource::open(dir.path(), 2, |_| true).unwrap();
            source.files[0].reader.chunk = chunk;
            let id = source.files[0].id.clone();
            let err = source.seek(&BTreeMap::from([(id, 7)])).unwrap_err().to_string();
            assert!(err.contains("the checkpoint is at line 7, the file has 6 lines"), "{err}");
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
