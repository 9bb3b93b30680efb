#![no_main]
use libfuzzer_sys::fuzz_target;
use natsguard::protocol::ServerToClient;

fuzz_target!(|data: &[u8]| natsguard_fuzz::check::<ServerToClient>(data));
