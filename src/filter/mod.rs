//! proxy-wasm glue (wasm32 only): moves bytes between Envoy and the connection engine.
//!
//! Foundation stage: a pass-through network filter that learns the client's SPIFFE ID from the
//! mTLS peer certificate and reports it. The SAN is only known once the TLS handshake finished,
//! which for a server-first protocol is at the client's first bytes, not at accept (see
//! shared/reference/envoy-istio-proxy-wasm.md §C1).

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection { peer_identity_seen: false }))
    }
}

struct Connection {
    peer_identity_seen: bool,
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if !self.peer_identity_seen {
            self.peer_identity_seen = true;
            let san = self.get_property(vec!["connection", "uri_san_peer_certificate"]);
            let principal = san.as_deref().map(String::from_utf8_lossy);
            let line = serde_json::json!({ "natsguard": "connection_start", "spiffe_id": principal });
            proxy_wasm::hostcalls::log(LogLevel::Info, &line.to_string()).ok();
        }
        Action::Continue
    }
}
