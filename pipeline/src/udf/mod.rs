//! User-defined functions: one Rust file per function in `udfs/`, written against
//! `arroyo-udf-plugin` 0.2 exactly as Arroyo expects, so a function runs unchanged
//! on an Arroyo cluster.
//!
//! - [`signature`] reads a file's `#[udf]` function the way Arroyo does;
//! - [`build`] compiles it into a cached dynamic library, outside our workspace
//!   (the plugin's arrow 51 cannot share a build with our arrow 59);
//! - [`ffi`] speaks the plugin's C ABI with arrow 59;
//! - [`functions`] registers it with DataFusion: scalar and async functions as
//!   scalar UDFs, `Vec<T>` functions as aggregates usable in windows.

pub mod build;
mod ffi;
mod functions;
pub mod signature;

use std::path::{Path, PathBuf};

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
pub use functions::Plugin;
use functions::{AggregatePlugin, ScalarPlugin};
pub use signature::{Kind, Signature};

/// One UDF source file.
#[derive(Debug, Clone)]
pub struct UdfFile {
    pub path: PathBuf,
    pub source: String,
    pub signature: Signature,
}

/// Every `.rs` file of `dir`, read and checked (not built).
pub fn load_dir(dir: &Path) -> Result<Vec<UdfFile>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    paths.sort();
    let built_in = built_in_functions();
    let mut files: Vec<UdfFile> = Vec::with_capacity(paths.len());
    for path in paths {
        let source = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let signature = signature::parse(&source).map_err(|message| Error::Udf { path: path.clone(), message })?;
        if built_in.contains(&signature.name) {
            return Err(Error::Udf {
                path,
                message: format!("`{}` is a built-in SQL function: give the UDF another name", signature.name),
            });
        }
        if let Some(other) = files.iter().find(|f| f.signature.name == signature.name) {
            return Err(Error::Udf {
                path,
                message: format!("defines `{}`, as {} does already", signature.name, other.path.display()),
            });
        }
        files.push(UdfFile { path, source, signature });
    }
    Ok(files)
}

/// The names SQL already has functions for: DataFusion's, and the windows'.
fn built_in_functions() -> std::collections::HashSet<String> {
    let state = datafusion::execution::session_state::SessionStateBuilder::new().with_default_features().build();
    let windows = crate::dialect::WINDOW_FUNCTIONS.iter().map(|n| n.to_string());
    let datafusion = state.scalar_functions().keys().chain(state.aggregate_functions().keys()).chain(state.window_functions().keys()).cloned();
    windows.chain(datafusion).collect()
}

/// The functions SQL files may call besides DataFusion's.
#[derive(Debug, Clone, Default)]
pub struct Udfs {
    plugins: Vec<Plugin>,
    /// Each plugin's source file.
    sources: Vec<PathBuf>,
    /// Each plugin's built library (named by its source's hash), if built.
    libraries: Vec<Option<PathBuf>>,
}

impl Udfs {
    /// Builds what is stale (with a progress line per build) and loads every UDF of `files`.
    pub fn build_and_load(files: &[UdfFile], cache: &Path, progress: &indicatif::MultiProgress) -> Result<Udfs> {
        let mut plugins = Vec::with_capacity(files.len());
        let mut libraries = Vec::with_capacity(files.len());
        let sources = files.iter().map(|f| f.path.clone()).collect();
        for file in files {
            let cached = build::library_path(cache, file).is_file();
            let bar = progress.add(indicatif::ProgressBar::new_spinner());
            if !cached {
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                bar.set_message(format!(
                    "building UDF {} ({}; the first build compiles the plugin's dependencies, a few minutes)",
                    file.signature.name,
                    file.path.display()
                ));
            }
            let library = build::build(cache, file);
            bar.finish_and_clear();
            let library = library?;
            libraries.push(Some(library.clone()));
            let library = ffi::Library::load(&library, matches!(file.signature.kind, Kind::Async(_)))
                .map_err(|message| Error::Udf { path: file.path.clone(), message })?;
            tracing::info!(udf = %file.signature, built = !cached, "loaded UDF");
            plugins.push(Plugin::new(file.signature.clone(), Some(library)));
        }
        Ok(Udfs { plugins, sources, libraries })
    }

    /// The functions as declared, not built: enough to plan (`sluice validate`), not to run.
    pub fn declared(files: &[UdfFile]) -> Udfs {
        Udfs {
            plugins: files.iter().map(|f| Plugin::new(f.signature.clone(), None)).collect(),
            sources: files.iter().map(|f| f.path.clone()).collect(),
            libraries: vec![None; files.len()],
        }
    }

    /// The built library of the function `name`: another one means its code changed.
    pub fn library_of(&self, name: &str) -> Option<&Path> {
        let i = self.plugins.iter().position(|p| p.signature().name == name)?;
        self.libraries.get(i)?.as_deref()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|p| p.signature().name.as_str())
    }

    /// The signature and source file of the function `name`.
    pub fn get(&self, name: &str) -> Option<(&Signature, &Path)> {
        let i = self.plugins.iter().position(|p| p.signature().name == name)?;
        Some((self.plugins[i].signature(), &self.sources[i]))
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn register(&self, ctx: &SessionContext) {
        for plugin in &self.plugins {
            match plugin.signature().kind {
                Kind::Aggregate => ctx.register_udaf(AggregateUDF::new_from_impl(AggregatePlugin(plugin.clone()))),
                Kind::Scalar | Kind::Async(_) => ctx.register_udf(ScalarUDF::new_from_impl(ScalarPlugin(plugin.clone()))),
            }
        }
    }
}
