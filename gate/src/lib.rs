//! The served lake's door: what `sluice serve` checks of a client's bytes before
//! anything runs.
//!
//! - [`token`]: who is asking (a JWT, verified with the server's one key);
//! - [`statement`]: whether a statement may run at all (its size and nesting,
//!   then the read-only allow-list);
//! - [`params`]: the analytics API's query parameters.
//!
//! Each is a pure function of its input, so the fuzz targets in `fuzz/` call
//! exactly what the server calls, without building the engine:
//!
//! ```
//! use sluice_gate::statement::{admit, StatementLimits};
//! let limits = StatementLimits::default();
//! assert!(admit("SELECT 1 + 1", &limits).is_ok());
//! let chain = format!("SELECT 1{}", " + 1".repeat(5000));
//! assert_eq!(admit(&chain, &limits).unwrap_err().code, "54001");
//! ```

pub mod effort;
pub mod params;
pub mod statement;
pub mod token;
