//! Arrow IPC read from bytes that may be damaged: a partial window state from
//! Kafka, a state file from the lake. Arrow 59's readers trust the lengths and
//! offsets they read: `StreamReader` and `FileReader` first set aside as much as
//! a length says (gigabytes, or an abort, for a damaged one), and the decoder
//! panics on a buffer past its message's body or a validity bitmap too short.
//! Here the frames are checked first, decoding works on the bytes at hand
//! (`StreamDecoder`), and a panic left is caught: damage is an error that says
//! what is wrong.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;

/// The rows of an Arrow IPC stream, as one batch.
pub fn read_stream(bytes: &[u8]) -> Result<RecordBatch, String> {
    let (schema, batches) = read_messages(bytes)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
}

/// The batches of an Arrow IPC file (as `FileWriter` writes them): read from its
/// messages, which are a stream between the leading magic (and its padding) and
/// the footer.
pub fn read_file(bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    const MAGIC: &[u8] = b"ARROW1";
    let Some(tail) = bytes.len().checked_sub(10).filter(|tail| *tail >= 8 && bytes.starts_with(MAGIC) && bytes.ends_with(MAGIC)) else {
        return Err("not an Arrow IPC file: no ARROW1 at its start and end".into());
    };
    let footer = i32::from_le_bytes([bytes[tail], bytes[tail + 1], bytes[tail + 2], bytes[tail + 3]]);
    let messages_end = usize::try_from(footer).ok().and_then(|footer| tail.checked_sub(footer)).filter(|end| *end >= 8);
    let messages_end = messages_end.ok_or_else(|| format!("a footer of {footer} bytes in a file of {}", bytes.len()))?;
    // The writer pads the magic with zeros up to its alignment (64 bytes by default).
    let messages_start = 8 + bytes[8..messages_end].iter().take_while(|b| **b == 0).count();
    Ok(read_messages(&bytes[messages_start..messages_end])?.1)
}

/// The schema and batches of a stream's messages.
fn read_messages(bytes: &[u8]) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), String> {
    check_frames(bytes)?;
    let decoded = std::panic::catch_unwind(|| -> Result<_, ArrowError> {
        let (mut decoder, mut buffer) = (StreamDecoder::new(), Buffer::from_slice_ref(bytes));
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            batches.extend(decoder.decode(&mut buffer)?);
        }
        decoder.finish()?;
        let schema = decoder.schema().ok_or_else(|| ArrowError::IpcError("no schema".into()))?;
        Ok((schema, batches))
    });
    match decoded {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("damaged: Arrow's decoder failed on it".into()),
    }
}

/// Checks that every message of a stream lies within `bytes`, and every buffer of
/// a batch within its message's body.
fn check_frames(mut bytes: &[u8]) -> Result<(), String> {
    while let [0xff, 0xff, 0xff, 0xff, a, b, c, d, rest @ ..] = bytes {
        let length = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
        if length == 0 {
            return Ok(());
        }
        let header = rest.get(..length).ok_or("a message header longer than the bytes")?;
        let message = arrow::ipc::root_as_message(header).map_err(|e| format!("a damaged message header: {e}"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a message body of negative length")?;
        let buffers = match (message.header_as_record_batch(), message.header_as_dictionary_batch().and_then(|d| d.data())) {
            (Some(batch), _) | (None, Some(batch)) => batch.buffers(),
            (None, None) => None,
        };
        for buffer in buffers.iter().flatten() {
            let end = buffer.offset().checked_add(buffer.length()).filter(|end| buffer.offset() >= 0 && buffer.length() >= 0 && *end as u64 <= body as u64);
            if end.is_none() {
                return Err(format!("a buffer at {} of {} bytes in a body of {body}", buffer.offset(), buffer.length()));
            }
        }
        bytes = length.checked_add(body).and_then(|end| rest.get(end..)).ok_or("a message body longer than the bytes")?;
    }
    match bytes {
        [] => Ok(()),
        _ => Err("bytes that are no message".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn rows() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("window_start", DataType::Int64, false),
            Field::new("service", DataType::Utf8, true),
            Field::new("sum", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![60, 60, 120])),
                Arc::new(StringArray::from(vec![Some("auth"), None, Some("devlab")])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0), None])),
            ],
        )
        .unwrap()
    }

    fn stream(batch: &RecordBatch) -> Vec<u8> {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
        writer.write(batch).unwrap();
        writer.into_inner().unwrap()
    }

    fn file(batch: &RecordBatch) -> Vec<u8> {
        let mut writer = arrow::ipc::writer::FileWriter::try_new(Vec::new(), &batch.schema()).unwrap();
        writer.write(batch).unwrap();
        writer.write(batch).unwrap();
        writer.into_inner().unwrap()
    }

    #[test]
    fn streams_and_files_read_back_as_they_were_written() {
        assert_eq!(read_stream(&stream(&rows())).unwrap(), rows());
        assert_eq!(read_file(&file(&rows())).unwrap(), vec![rows(), rows()]);
    }

    /// Bytes at random, and good streams and files cut and flipped at random: each
    /// reads or is refused, and none panics or asks for more memory than it has.
    #[test]
    fn damaged_bytes_are_refused_or_read_never_a_panic() {
        let (stream, file) = (stream(&rows()), file(&rows()));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
        let (mut read, mut refused) = (0, 0);
        for i in 0..40_000 {
            let good = if i % 2 == 0 { &stream } else { &file };
            let mut bytes = match rng.random_range(0..3) {
                0 => (0..rng.random_range(1..64)).map(|_| rng.random()).collect(),
                1 => good[..rng.random_range(1..good.len())].to_vec(),
                _ => good.clone(),
            };
            for _ in 0..rng.random_range(0..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            let result = if i % 2 == 0 { read_stream(&bytes).map(|_| ()) } else { read_file(&bytes).map(|_| ()) };
            match result {
                Ok(()) => read += 1,
                Err(e) => {
                    assert!(!e.is_empty());
                    refused += 1;
                }
            }
        }
        assert!(read > 1_000 && refused > 20_000, "read {read}, refused {refused}");
    }
}
