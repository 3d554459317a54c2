//! The `sluice` binary: parse arguments, run the command, print errors in one line.

use clap::Parser;

/// Warnings, without the Delta kernel's complaints about tables that do not exist
/// yet, the AWS SDK's about each credential source it tried (a missing credential
/// is one error line of ours), nor delta-rs's at every commit of the raw archive
/// (no statistics for its binary `value` column, as intended).
const DEFAULT_LOG: &str =
    "warn,sluice::runtime::backfill=info,buoyant_kernel=off,delta_kernel=off,aws_config=error,deltalake_core::writer::stats=error";
/// A long-running Kafka pipeline also logs one line per commit; a server, where it listens.
/// (A group's shards append to `late_events` side by side: delta-rs warns of every
/// such commit it retries at the next version, which is how it should go.)
const SERVICE_LOG: &str = "warn,sluice=info,buoyant_kernel=off,delta_kernel=off,aws_config=error,deltalake_core::writer::stats=error,deltalake_core::kernel::transaction=error";

/// deltalake aborts a failed Parquet upload inside `catch_unwind`, because
/// object_store's `BufWriter::abort` panics by design once its shutdown began (an
/// upload cut off by a store outage). That panic is handled, and the retry that
/// follows is logged: print nothing for it, or an outage would look like a crash.
fn quiet_handled_upload_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_buffered_upload = info.location().is_some_and(|l| l.file().contains("object_store") && l.file().ends_with("src/buffered.rs"));
        let message = info.payload().downcast_ref::<&str>().copied().unwrap_or_default();
        if !(from_buffered_upload && message == "Already shut down") {
            default(info);
        }
    }));
}

/// jemalloc, which gives freed memory back: with glibc's malloc, Arrow buffers
/// freed on another thread than the one that made them stayed in that thread's
/// heap, and a long run's RSS grew to four times its live heap (README,
/// Performance: Memory).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread returns pages
/// unused for a second, rather than waiting for the next allocation to do it.
/// `_RJEM_MALLOC_CONF` in the environment overrides them.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

/// Every runtime thread's stack.
const THREAD_STACK: usize = 32 << 20;

fn main() -> std::process::ExitCode {
    quiet_handled_upload_panics();
    let cli = sluice::cli::Cli::parse();
    let default_log = match &cli.command {
        sluice::cli::Command::Run(args) if args.kafka.is_some() => SERVICE_LOG,
        sluice::cli::Command::Serve(_) => SERVICE_LOG,
        _ => DEFAULT_LOG,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal; a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Deep recursion in planning (a statement nested a thousand levels deep, which
    // `sluice serve` admits) needs more than tokio's 2 MiB; it is address space,
    // touched only as far as used.
    let runtime = match tokio::runtime::Builder::new_multi_thread().thread_stack_size(THREAD_STACK).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice::cli::main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the message's origin (DataFusion's may span several).
            // Never a credential, even when a store's answer quotes one.
            eprintln!("error: {}", sluice::catalog::storage::redact(&e.to_string()).replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
