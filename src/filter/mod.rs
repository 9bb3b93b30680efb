//! proxy-wasm glue (wasm32 only): moves bytes between Envoy and the connection engine and
//! applies its verdicts; reports metrics and audit lines; fetches remote JWKS.
//!
//! What a network filter can and cannot do in Envoy is recorded in
//! shared/reference/envoy-istio-proxy-wasm.md: the peer certificate is known from the client's
//! first bytes on (§C1); a close requested in the callback that writes an `-ERR` loses it, so
//! closes are deferred to the root context's tick (§A5, §B); held client bytes can be replaced
//! and released from another callback while the stream is paused.
//!
//! Root contexts — configurations, which one decides a plugin's connections, the VM's tick,
//! JWKS fetches — are in [`roots`].

mod host;
mod metrics;
mod policy_record;
mod roots;
mod shared_jwks;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, LogLevel};

use crate::engine::{AuditEvent, Close, Connection, EventKind, Forward, Report, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(roots::Root { context_id })
    });
}}

fn now() -> Duration {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn log(level: LogLevel, message: &str) {
    let _ = proxy_wasm::hostcalls::log(level, message);
}

/// Sends the bytes that replace what a waiting connection held, and lets its stream go on.
fn release_held(verdict: Verdict) {
    // `resume` answers with the bytes to send in place of everything held.
    let bytes = match verdict.forward {
        Forward::Replace(bytes) => bytes,
        Forward::Unchanged | Forward::Prefix(_) | Forward::Hold => return,
    };
    let held = proxy_wasm::hostcalls::get_buffer(BufferType::DownstreamData, 0, usize::MAX)
        .ok()
        .flatten()
        .map_or(0, |held| held.len());
    if host::replace_buffer(BufferType::DownstreamData, held, &bytes).is_err()
        || host::resume_client_stream().is_err()
    {
        let _ = host::close_connection();
    }
}

struct Stream {
    id: u32,
    connection: Rc<RefCell<Connection>>,
    identity_read: bool,
}

impl Stream {
    fn new(id: u32, connection: Rc<RefCell<Connection>>) -> Stream {
        Stream {
            id,
            connection,
            identity_read: false,
        }
    }
}

impl Context for Stream {}

impl Stream {
    /// Applies the engine's verdict on `chunk`, the `size` bytes Envoy holds in `buffer`.
    fn apply(&self, buffer: BufferType, size: usize, chunk: &[u8], verdict: Verdict) -> Action {
        let mut action = Action::Continue;
        let written = match &verdict.forward {
            Forward::Unchanged => Ok(()),
            Forward::Prefix(len) => host::replace_buffer(buffer, size, &chunk[..*len]),
            Forward::Replace(bytes) => host::replace_buffer(buffer, size, bytes),
            Forward::Hold => {
                action = Action::Pause;
                host::replace_buffer(buffer, size, &[])
            }
        };
        match (written, verdict.close) {
            (Err(_), _) | (Ok(()), Some(Close::Now)) => {
                let _ = host::close_connection();
            }
            (Ok(()), Some(Close::AfterWrite)) => roots::close_later(self.id),
            (Ok(()), None) => {}
        }
        action
    }
}

impl StreamContext for Stream {
    fn on_downstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if !self.identity_read {
            // The TLS handshake is complete once the client sent bytes (§C1).
            self.identity_read = true;
            let san = self.get_property(vec!["connection", "uri_san_peer_certificate"]);
            let san = san
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|san| !san.is_empty());
            self.connection.borrow_mut().set_peer_uri_san(san);
        }
        if size == 0 {
            return Action::Continue;
        }
        let chunk = self.get_downstream_data(0, size).unwrap_or_default();
        let mut connection = self.connection.borrow_mut();
        let verdict = connection.client_data(&chunk, now());
        let action = self.apply(BufferType::DownstreamData, size, &chunk, verdict);
        publish(self.id, &mut connection);
        action
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if size == 0 {
            return Action::Continue;
        }
        let chunk = self.get_upstream_data(0, size).unwrap_or_default();
        let mut connection = self.connection.borrow_mut();
        let verdict = connection.server_data(&chunk, now());
        let action = self.apply(BufferType::UpstreamData, size, &chunk, verdict);
        publish(self.id, &mut connection);
        action
    }

    fn on_log(&mut self) {
        let mut connection = self.connection.borrow_mut();
        let end = connection.connection_end();
        publish(self.id, &mut connection);
        log(LogLevel::Info, &end.json);
        roots::forget_connection(self.id);
    }
}

/// Counts and logs what connection `stream` reported, and records the identity and decision in
/// Envoy's filter state for access logs (`%FILTER_STATE(wasm.natsguard_identity:PLAIN)%`).
fn publish(stream: u32, connection: &mut Connection) {
    let Report {
        counters,
        events,
        labelled,
    } = connection.take_report();
    metrics::count_frames(&counters);
    metrics::count_labelled(stream, &labelled, &counters);
    for event in events {
        record(&event, connection);
        log(LogLevel::Info, &event.json);
    }
}

fn record(event: &AuditEvent, connection: &Connection) {
    match event.kind {
        EventKind::ConnectionStart => {
            metrics::count("connections_accepted");
            let principal = connection
                .identity()
                .map(|identity| identity.to_string())
                .unwrap_or_default();
            let _ = proxy_wasm::hostcalls::set_property(
                vec!["natsguard_identity"],
                Some(principal.as_bytes()),
            );
            let _ = proxy_wasm::hostcalls::set_property(vec!["natsguard_decision"], Some(b"allow"));
            record_policy_version(connection);
        }
        EventKind::ConnectionRevoked => {
            let decision = format!("revoked:{}", event.reason);
            let _ = proxy_wasm::hostcalls::set_property(
                vec!["natsguard_decision"],
                Some(decision.as_bytes()),
            );
        }
        EventKind::AuthFailure | EventKind::Refused => {
            metrics::count_reason("connections_denied", event.reason);
            if event.reason.starts_with("jwt_") {
                metrics::count_reason("jwt_failures", event.reason);
            }
            let decision = format!("deny:{}", event.reason);
            let _ = proxy_wasm::hostcalls::set_property(
                vec!["natsguard_decision"],
                Some(decision.as_bytes()),
            );
        }
        EventKind::ProtocolError => metrics::count_reason("protocol_errors", event.reason),
        EventKind::Expired => metrics::count_reason("connections_closed", event.reason),
        EventKind::Deny
        | EventKind::ReservedHeadersRemoved
        | EventKind::SubscriptionRevoked
        | EventKind::ShadowDiff
        | EventKind::Subscribe
        | EventKind::Unsubscribe
        | EventKind::ConnectionEnd => {}
    }
}

/// The version of the configuration deciding the connection, in Envoy's filter state
/// (`%FILTER_STATE(wasm.natsguard_policy_version:PLAIN)%`); the stream must be effective.
fn record_policy_version(connection: &Connection) {
    let _ = proxy_wasm::hostcalls::set_property(
        vec!["natsguard_policy_version"],
        Some(connection.policy_version().as_bytes()),
    );
}
