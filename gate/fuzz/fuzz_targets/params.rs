//! Any query string of the analytics API or the dashboard: parsed or refused with
//! a short message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_gate::params::{analytics, dashboard};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    for answer in [analytics(query).map(|_| ()), dashboard(query).map(|_| ())] {
        if let Err(message) = answer {
            assert!(message.len() < 400, "an error message quotes too much: {} bytes", message.len());
        }
    }
});
