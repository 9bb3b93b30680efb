#![no_main]
use libfuzzer_sys::fuzz_target;
use natsguard::protocol::ClientToServer;

fuzz_target!(|data: &[u8]| natsguard_fuzz::check::<ClientToServer>(data));
