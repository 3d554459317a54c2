//! The C ABI of `arroyo-udf-plugin` 0.2, spoken with arrow 59's `ffi` module (the
//! Arrow C data interface is the same across arrow versions), without linking any
//! arroyo crate. Types and ownership as the plugin's macro generates them:
//!
//! - arguments go in as a `Vec<FfiArraySchema>` leaked into `FfiArrays`; the plugin
//!   takes it back with `Vec::from_raw_parts` and frees it with its allocator, the
//!   system one, so it is allocated here with [`System`] whatever our allocator is;
//! - a result (`RunResult::Ok`, `DrainResult::Data`) belongs to us; its release
//!   callbacks live in the library, which therefore stays loaded for the process;
//! - a panic in a sync function's body comes back as `RunResult::Err`; a panic
//!   before it (an argument type arrow 51 cannot import) would abort the process,
//!   so arguments are cast to exactly the declared types before every call.
//!
//! `udfs/ABI.md` is the full reference, checked against real plugin builds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::path::Path;

use arrow::array::{make_array, ArrayData, ArrayRef};
use arrow::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};

#[repr(C)]
pub struct FfiArraySchema(pub FFI_ArrowArray, pub FFI_ArrowSchema);

#[repr(C)]
pub struct FfiArrays {
    ptr: *mut FfiArraySchema,
    len: usize,
    capacity: usize,
    error: bool,
}

#[repr(C)]
#[allow(dead_code)] // made by the plugin
pub enum RunResult {
    Ok(FfiArraySchema),
    Err,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AsyncHandle {
    ptr: *mut c_void,
}

// The handle is a boxed runtime handle inside the plugin, made to be sent across threads.
unsafe impl Send for AsyncHandle {}
unsafe impl Sync for AsyncHandle {}

#[repr(C)]
#[allow(dead_code)] // made by the plugin
pub enum DrainResult {
    Data(FfiArrays),
    None,
    Error,
}

type RunFn = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;
type StartFn = unsafe extern "C-unwind" fn(ordered: bool, timeout_micros: u64, allowed_in_flight: u32) -> AsyncHandle;
type SendFn = unsafe extern "C-unwind" fn(AsyncHandle, id: u64, FfiArrays) -> async_ffi::FfiFuture<bool>;
type DrainFn = unsafe extern "C-unwind" fn(AsyncHandle) -> DrainResult;
type StopFn = unsafe extern "C-unwind" fn(AsyncHandle);

impl FfiArrays {
    /// Exports arrays for one call; the plugin owns them from then on.
    fn export(arrays: &[ArrayRef]) -> Result<FfiArrays, String> {
        if arrays.is_empty() {
            return Err("a call without arguments".into());
        }
        let layout = Layout::array::<FfiArraySchema>(arrays.len()).map_err(|e| e.to_string())?;
        let exported = arrays
            .iter()
            .map(|a| to_ffi(&a.to_data()).map(|(array, schema)| FfiArraySchema(array, schema)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        // SAFETY: a non-zero layout; every slot is written before the plugin reads it.
        let ptr = unsafe { System.alloc(layout) } as *mut FfiArraySchema;
        if ptr.is_null() {
            return Err("out of memory exporting UDF arguments".into());
        }
        for (i, e) in exported.into_iter().enumerate() {
            unsafe { ptr.add(i).write(e) };
        }
        Ok(FfiArrays { ptr, len: arrays.len(), capacity: arrays.len(), error: false })
    }

    /// Imports arrays the plugin gave us, and frees their buffer.
    ///
    /// # Safety
    /// `self` came from the plugin (a leaked `Vec` of the system allocator).
    unsafe fn import(self) -> Result<Vec<ArrayData>, String> {
        let mut out = Vec::with_capacity(self.len);
        let mut failed = None;
        for i in 0..self.len {
            let FfiArraySchema(array, schema) = std::ptr::read(self.ptr.add(i));
            match from_ffi(array, &schema) {
                Ok(data) => out.push(data),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if self.capacity != 0 {
            if let Ok(layout) = Layout::array::<FfiArraySchema>(self.capacity) {
                System.dealloc(self.ptr as *mut u8, layout);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// A function exported by `library`.
///
/// # Safety
/// `T` is the symbol's type.
unsafe fn symbol<T: Copy>(library: &libloading::Library, path: &Path, name: &[u8]) -> Result<T, String> {
    library.get::<T>(name).map(|s| *s).map_err(|e| format!("{}: {e}", path.display()))
}

/// The functions of a loaded UDF library. The library is never unloaded: arrays
/// it returned may outlive any one call, and their release callbacks live in it.
pub struct Library {
    symbols: Symbols,
}

enum Symbols {
    Sync(RunFn),
    Async { start: StartFn, send: SendFn, drain: DrainFn, stop: StopFn },
}

impl Library {
    pub fn load(path: &Path, is_async: bool) -> Result<Library, String> {
        // SAFETY: a library built by `udf::build` from a plugin crate: its initialisers are the
        // plugin's. Leaked: never unloaded.
        let library: &'static libloading::Library =
            Box::leak(Box::new(unsafe { libloading::Library::new(path) }.map_err(|e| format!("loading {}: {e}", path.display()))?));
        // SAFETY: the symbols have the plugin's signatures (above).
        let symbols = unsafe {
            if is_async {
                Symbols::Async {
                    start: symbol(library, path, b"__start\0")?,
                    send: symbol(library, path, b"__send\0")?,
                    drain: symbol(library, path, b"__drain_results\0")?,
                    stop: symbol(library, path, b"__stop_runtime\0")?,
                }
            } else {
                Symbols::Sync(symbol(library, path, b"__run\0")?)
            }
        };
        Ok(Library { symbols })
    }

    /// Calls a sync function (`__run`) on argument arrays of equal length and exactly
    /// the declared types. `Ok(None)` when the function panicked.
    pub fn run(&self, args: &[ArrayRef]) -> Result<Option<ArrayRef>, String> {
        let Symbols::Sync(run) = self.symbols else { return Err("not a sync function".into()) };
        let args = FfiArrays::export(args)?;
        // SAFETY: arguments as the plugin expects them (module doc).
        match unsafe { run(args) } {
            RunResult::Ok(FfiArraySchema(array, schema)) => {
                let data = unsafe { from_ffi(array, &schema) }.map_err(|e| e.to_string())?;
                Ok(Some(make_array(data)))
            }
            RunResult::Err => Ok(None),
        }
    }

    /// Starts an async function's runtime (a thread inside the plugin).
    pub fn start(&self, ordered: bool, timeout_micros: u64, allowed_in_flight: u32) -> Result<AsyncHandle, String> {
        let Symbols::Async { start, .. } = self.symbols else { return Err("not an async function".into()) };
        Ok(unsafe { start(ordered, timeout_micros, allowed_in_flight) })
    }

    /// Queues one row (one-row arrays); false when the runtime has died.
    pub async fn send(&self, handle: AsyncHandle, id: u64, args: &[ArrayRef]) -> Result<bool, String> {
        let Symbols::Async { send, .. } = self.symbols else { return Err("not an async function".into()) };
        let args = FfiArrays::export(args)?;
        Ok(unsafe { send(handle, id, args) }.await)
    }

    /// The results finished so far: `(ids, values)`; `Err` when the runtime failed.
    pub fn drain(&self, handle: AsyncHandle) -> Result<Option<(ArrayData, ArrayData)>, String> {
        let Symbols::Async { drain, .. } = self.symbols else { return Err("not an async function".into()) };
        match unsafe { drain(handle) } {
            DrainResult::None => Ok(None),
            DrainResult::Error => Err("its runtime failed (a call timed out or panicked)".into()),
            DrainResult::Data(arrays) => {
                let mut arrays = unsafe { arrays.import() }?.into_iter();
                match (arrays.next(), arrays.next()) {
                    (Some(ids), Some(values)) => Ok(Some((ids, values))),
                    _ => Err("results without ids and values".into()),
                }
            }
        }
    }

    pub fn stop(&self, handle: AsyncHandle) {
        if let Symbols::Async { stop, .. } = self.symbols {
            unsafe { stop(handle) }
        }
    }
}
