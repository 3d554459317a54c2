//! Any bytes as a bearer token or Postgres password: verified or refused, never a
//! panic, and a refusal never repeats the token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_gate::token::Verifier;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let Ok(verifier) = Verifier::hs256(b"fuzzing secret of enough bytes") else { return };
    if let Err(refusal) = verifier.verify(token) {
        let message = refusal.to_string();
        if token.trim().len() > 24 {
            assert!(!message.contains(token.trim()), "a refusal repeated the token: {message}");
        }
    }
});
