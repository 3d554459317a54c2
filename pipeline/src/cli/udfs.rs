//! `sluice udfs build` and `sluice udfs list`.

use super::Definitions;
use crate::error::Result;
use crate::udf::build::{cache_dir, library_path};

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Action {
    /// Build every UDF whose source or toolchain changed since its cached build.
    Build,
    /// Name, signature, kind, source file and cache state of every UDF.
    List,
}

pub fn udfs(action: Action, definitions: &Definitions) -> Result<()> {
    match action {
        Action::Build => {
            let udfs = definitions.udfs()?;
            super::emit(&format!("{} UDFs built and loaded (cache: {})\n", udfs.len(), cache_dir().display()))
        }
        Action::List => {
            let cache = cache_dir();
            let mut out = String::new();
            for file in definitions.udf_files()? {
                let library = library_path(&cache, &file);
                let state = if library.is_file() { format!("built ({})", library.display()) } else { "not built".to_string() };
                out.push_str(&format!(
                    "{:<16} {:<10} {}\n                 source {}\n                 cache  {state}\n",
                    file.signature.name,
                    file.signature.kind.label(),
                    file.signature,
                    file.path.display()
                ));
            }
            if out.is_empty() {
                out.push_str("no UDFs (add one Rust file per function to udfs/)\n");
            }
            super::emit(&out)
        }
    }
}
