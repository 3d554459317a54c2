//! Embeds the dashboard's chart library: uPlot, which `npm ci --prefix dashboard`
//! (run by infra/setup.sh) brings into dashboard/node_modules. Without it the
//! build still succeeds, and the page says how to get the charts.

use std::path::Path;

fn main() {
    let dashboard = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../dashboard");
    println!("cargo:rerun-if-changed={}", dashboard.display());
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    let dist = dashboard.join("node_modules/uplot/dist");
    for (from, to, missing) in [
        ("uPlot.iife.min.js", "uplot.js", "window.uPlot = null; // uPlot was not installed: run `npm ci --prefix dashboard` (infra/setup.sh does), then rebuild\n"),
        ("uPlot.min.css", "uplot.css", "/* uPlot was not installed */\n"),
    ] {
        let target = Path::new(&out).join(to);
        let written = match std::fs::read(dist.join(from)) {
            Ok(bytes) => std::fs::write(&target, bytes),
            Err(_) => {
                println!("cargo:warning=dashboard/node_modules/uplot is missing: the dashboard will have no charts (run `npm ci --prefix dashboard`, then rebuild)");
                std::fs::write(&target, missing)
            }
        };
        if let Err(e) = written {
            panic!("build script: cannot write {}: {e}", target.display());
        }
    }
}
