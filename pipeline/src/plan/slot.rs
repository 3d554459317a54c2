//! A table whose rows are whatever batch the runtime put in its slot just before the
//! plan runs: how one planned DataFusion query is executed again for every batch of
//! a stream without planning again.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::streaming::PartitionStream;

/// The batches a [`SlotTable`] yields on its next execution.
#[derive(Debug, Clone)]
pub struct Slot {
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl Slot {
    pub fn new(schema: SchemaRef) -> Self {
        Slot { schema, batches: Arc::default() }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Puts `batches` in the slot; the next execution reads them.
    pub fn fill(&self, batches: Vec<RecordBatch>) {
        *self.lock() = batches;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordBatch>> {
        // A panic while holding this lock leaves plain data behind: keep going.
        self.batches.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A DataFusion table over the slot.
    pub fn table(&self) -> datafusion::error::Result<StreamingTable> {
        StreamingTable::try_new(self.schema.clone(), vec![Arc::new(self.clone())])
    }
}

impl PartitionStream for Slot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = std::mem::take(&mut *self.lock());
        // MemoryStream::try_new only fails on a bad projection, and there is none.
        match MemoryStream::try_new(batches, self.schema.clone(), None) {
            Ok(stream) => Box::pin(stream),
            Err(e) => Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async move { Err(e) }),
            )),
        }
    }
}
