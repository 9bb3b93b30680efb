#![no_main]
//! `natsguard check` on any input: finding the configurations (JSON, Envoy YAML/JSON, ECDS,
//! WasmPlugin), the filter's loader and the lints never panic; every error is one line naming
//! the file; a configuration check accepts is one the filter's loader accepts.
use libfuzzer_sys::fuzz_target;
use natsguard::command::check::check;
use natsguard::engine::Gate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = check("fuzz.json", text, &|_| None);
    for error in &checked.errors {
        assert!(!error.contains('\n') && error.starts_with("fuzz.json"), "{error:?}");
    }
    // The file is the configuration itself (no location): what check accepts, the filter loads.
    if checked.lines.first().is_some_and(|line| line.starts_with("fuzz.json: valid")) {
        assert!(Gate::load(text, &|_| Ok(None)).is_ok(), "check accepted what the loader refuses");
    }
});
