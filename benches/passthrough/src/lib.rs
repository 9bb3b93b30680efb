//! A pass-through proxy-wasm network filter: every chunk, both directions, is copied into the VM
//! and scanned for line ends (what any NATS-aware filter must at least do), then forwarded
//! unchanged. natsguard's cost is measured against it in the same run (`make bench`).

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Stream { lines: 0 }))
    }
}

struct Stream {
    /// Kept so the scan cannot be optimised away.
    lines: usize,
}

impl Context for Stream {}

impl StreamContext for Stream {
    fn on_downstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if let Some(chunk) = self.get_downstream_data(0, size) {
            self.lines = self
                .lines
                .wrapping_add(memchr::memchr_iter(b'\n', &chunk).count());
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if let Some(chunk) = self.get_upstream_data(0, size) {
            self.lines = self
                .lines
                .wrapping_add(memchr::memchr_iter(b'\n', &chunk).count());
        }
        Action::Continue
    }
}
