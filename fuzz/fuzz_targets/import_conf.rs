#![no_main]
//! `natsguard import` on any input: the nats-server configuration parser and the conversion
//! never panic, an error is one line naming a file, and an imported policy loads. The input up
//! to its first NUL byte is the configuration; what follows is `other.conf` (next to it and in
//! `sub/`), for includes; `$FUZZ` reads the environment variable holding the configuration's
//! last line; the configuration may include itself (a cycle).
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use natsguard::import::{import_with, parse_file, MemoryInputs, UserMapping};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (main, other) = text.split_once('\0').unwrap_or((&text, ""));
    let mut inputs = MemoryInputs::default();
    for (path, file) in [
        ("fuzz/nats.conf", main),
        ("fuzz/other.conf", other),
        ("fuzz/sub/other.conf", other),
    ] {
        inputs.files.insert(path.into(), file.to_owned());
    }
    inputs.env.insert(
        "FUZZ".to_owned(),
        main.lines().last().unwrap_or("").to_owned(),
    );
    let conf = Path::new("fuzz/nats.conf");
    let one_line = |error: &dyn std::fmt::Display| {
        let line = error.to_string();
        assert!(
            !line.contains('\n') && line.starts_with("fuzz/"),
            "{line:?}"
        );
    };
    if let Err(error) = parse_file(conf, &inputs) {
        one_line(&error);
    }
    let users: Vec<UserMapping> = ["a=cluster.local/ns/a/sa/a", "b=example.org/ns/b/sa/b"]
        .iter()
        .map(|text| text.parse().expect("valid mapping"))
        .collect();
    match import_with(conf, &users, &inputs) {
        Ok(imported) => {
            natsguard::policy::load(&imported.policy.to_string())
                .expect("the imported policy loads");
        }
        Err(error) => one_line(&error),
    }
});
