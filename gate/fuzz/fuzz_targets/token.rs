//! Any bytes as a bearer token or Postgres password: verified or refused, never a
//! panic; a refusal is short and never repeats a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_gate::token::Verifier;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let Ok(verifier) = Verifier::hs256(b"fuzzing secret of enough bytes") else { return };
    if let Err(refusal) = verifier.verify(token) {
        let message = refusal.to_string();
        assert!(message.len() < 300, "a refusal of {} bytes", message.len());
        // A token-shaped input (three base64url segments) is never repeated.
        let token = token.trim();
        let segments: Vec<&str> = token.split('.').collect();
        let shaped = segments.len() == 3 && segments.iter().all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if shaped && token.len() > 24 {
            assert!(!message.contains(token), "a refusal repeated the token: {message}");
        }
    }
});
