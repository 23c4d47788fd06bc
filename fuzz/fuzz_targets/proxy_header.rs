#![no_main]
//! Invariants: see `check_proxy_header` in tests/support/fuzz_checks.rs (shared with tests/fuzz_smoke.rs).

#[path = "../../tests/support/fuzz_checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_proxy_header(data);
});
