//! Builds a UDF file into a dynamic library, outside the workspace: a generated
//! crate (`cdylib`, its own lockfile) depending on `arroyo-udf-plugin` 0.2 with
//! `chrono` pinned below 0.4.40 (arrow 51 does not compile with later ones). All
//! UDFs share one target directory, so only the first build compiles the plugin's
//! dependencies (minutes); later ones take seconds.
//!
//! Libraries are cached by a hash of the source and the toolchain
//! (`<cache>/lib/lib<name>-<hash>.so`, the latest build of each function): a
//! machine that built once starts at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::UdfFile;
use crate::error::{Error, Result};

/// Bumped when the generated crate changes, so older builds are not reused.
const TEMPLATE_VERSION: &str = "3";

/// Where UDF builds live: `$SLUICE_CACHE/udfs`, by default `~/.cache/sluice/udfs`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("SLUICE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/sluice")
    });
    base.join("udfs")
}

/// `rustc -V`, part of every cache key.
fn toolchain() -> &'static str {
    static TOOLCHAIN: OnceLock<String> = OnceLock::new();
    TOOLCHAIN.get_or_init(|| {
        Command::new("rustc")
            .arg("-V")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "rustc unknown".into())
    })
}

/// The cached library of a UDF file (which may not exist yet).
pub fn library_path(cache: &Path, file: &UdfFile) -> PathBuf {
    let mut hash = Sha256::new();
    for part in [TEMPLATE_VERSION, toolchain(), &file.source] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest: String = hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    cache.join("lib").join(format!("lib{}-{digest}.{}", file.signature.name, std::env::consts::DLL_EXTENSION))
}

fn crate_name(file: &UdfFile) -> String {
    format!("sluice_udf_{}", file.signature.name)
}

/// The generated crate's Cargo.toml.
fn manifest(file: &UdfFile) -> Result<String> {
    let name = crate_name(file);
    let table = |pairs: Vec<(&str, toml::Value)>| toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    let text = |s: &str| toml::Value::String(s.into());
    let mut dependencies = file.signature.dependencies.clone();
    dependencies.insert("arroyo-udf-plugin".into(), text("0.2"));
    dependencies.insert("chrono".into(), text("=0.4.39"));
    let manifest = table(vec![
        ("package", table(vec![("name", text(&name)), ("version", text("0.1.0")), ("edition", text("2021"))])),
        ("lib", table(vec![("crate-type", toml::Value::Array(vec![text("cdylib")])), ("path", text("src/lib.rs"))])),
        ("dependencies", toml::Value::Table(dependencies)),
        // The macro's per-row loop inlines arrow's builders: one codegen unit helps.
        ("profile", table(vec![("release", table(vec![("package", table(vec![(&name, table(vec![("codegen-units", toml::Value::Integer(1))]))]))]))])),
        // Not part of any enclosing workspace.
        ("workspace", table(vec![])),
    ]);
    toml::to_string(&manifest).map_err(|e| Error::Udf { path: file.path.clone(), message: format!("its Cargo.toml: {e}") })
}

/// Builds `file` into its cached library (a no-op when it is there).
pub fn build(cache: &Path, file: &UdfFile) -> Result<PathBuf> {
    let library = library_path(cache, file);
    if library.is_file() {
        return Ok(library);
    }
    let fail = |message: String| Error::Udf { path: file.path.clone(), message };
    let io = |path: &Path, e: std::io::Error| Error::io(path, e);
    let dir = cache.join("crates").join(&file.signature.name);
    std::fs::create_dir_all(dir.join("src")).map_err(|e| io(&dir, e))?;
    write_if_changed(&dir.join("Cargo.toml"), &manifest(file)?)?;
    write_if_changed(&dir.join("src/lib.rs"), &file.source)?;
    let target = cache.join("target");
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet", "--message-format", "short", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .map_err(|e| fail(format!("cannot run cargo to build it ({e}): UDFs need a Rust toolchain (rustup.rs)")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).take(20).collect();
        let shown = if errors.is_empty() { stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect() } else { errors };
        // The generated crate's lib.rs is the file verbatim: name the file instead.
        let shown = shown.join("\n").replace("src/lib.rs", &file.path.display().to_string());
        return Err(fail(format!("does not build:\n{shown}")));
    }
    let built = target.join("release").join(format!(
        "{}{}.{}",
        std::env::consts::DLL_PREFIX,
        crate_name(file),
        std::env::consts::DLL_EXTENSION
    ));
    let lib_dir = cache.join("lib");
    std::fs::create_dir_all(&lib_dir).map_err(|e| io(&lib_dir, e))?;
    // Copied under a temporary name and renamed: a concurrent run never loads half a file.
    let partial = library.with_extension(format!("partial-{}", std::process::id()));
    std::fs::copy(&built, &partial).map_err(|e| io(&built, e))?;
    std::fs::rename(&partial, &library).map_err(|e| io(&library, e))?;
    remove_older_builds(&lib_dir, file, &library);
    Ok(library)
}

/// The cache keeps one build per function: the latest.
fn remove_older_builds(lib_dir: &Path, file: &UdfFile, latest: &Path) {
    let prefix = format!("lib{}-", file.signature.name);
    let Ok(entries) = std::fs::read_dir(lib_dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let library = path.extension().is_some_and(|x| x == std::env::consts::DLL_EXTENSION);
        let older = library && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)) && path != latest;
        if older {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_manifest_pins_the_plugin_and_keeps_the_files_dependencies() {
        let source = "/*\n[dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\nchrono = \"0.4.41\"\n*/\n#[udf] fn f(a: i64) -> i64 { a }";
        let file = UdfFile { path: "f.rs".into(), source: source.into(), signature: super::super::signature::parse(source).unwrap() };
        let manifest: toml::Table = toml::from_str(&manifest(&file).unwrap()).unwrap();
        let deps = manifest["dependencies"].as_table().unwrap();
        assert_eq!(deps["arroyo-udf-plugin"].as_str(), Some("0.2"));
        assert_eq!(deps["chrono"].as_str(), Some("=0.4.39"), "arrow 51 does not build with a later chrono");
        assert_eq!(deps["serde"]["features"][0].as_str(), Some("derive"));
        assert_eq!(manifest["lib"]["crate-type"][0].as_str(), Some("cdylib"));
        assert!(manifest["workspace"].as_table().is_some_and(|w| w.is_empty()));
    }
}
