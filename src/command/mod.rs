//! The `natsguard` command's work, as plain functions over text (the binary,
//! `src/bin/natsguard.rs`, only reads files and prints): finding natsguard's configuration in
//! the files users have, checking it with the filter's loader, and explaining decisions with the
//! engine's own code. Host only.

pub mod check;
pub mod explain;
pub mod source;
pub mod verify;
