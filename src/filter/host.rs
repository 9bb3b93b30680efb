//! Host calls whose failure must not panic the VM. The SDK's wrappers panic on any status but
//! `Ok`; here a failed call is reported to the caller, which fails closed by closing the
//! connection instead.

use proxy_wasm::types::{BufferType, Status, StreamType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> Status;
    fn proxy_continue_stream(stream_type: StreamType) -> Status;
    fn proxy_close_stream(stream_type: StreamType) -> Status;
}

fn ok(status: Status) -> Result<(), Status> {
    match status {
        Status::Ok => Ok(()),
        status => Err(status),
    }
}

/// Replaces the first `size` bytes of the buffer (Envoy supports edits at offset 0 only).
pub fn replace_buffer(buffer_type: BufferType, size: usize, bytes: &[u8]) -> Result<(), Status> {
    ok(unsafe { proxy_set_buffer_bytes(buffer_type, 0, size, bytes.as_ptr(), bytes.len()) })
}

/// Lets a paused client stream continue (the held bytes go upstream without another
/// `on_downstream_data` for them).
pub fn resume_client_stream() -> Result<(), Status> {
    ok(unsafe { proxy_continue_stream(StreamType::Downstream) })
}

/// Closes the client connection (`FlushWrite`): bytes already queued toward the client go out.
pub fn close_connection() -> Result<(), Status> {
    ok(unsafe { proxy_close_stream(StreamType::Downstream) })
}
