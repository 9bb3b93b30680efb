//! proxy-wasm glue (wasm32 only): moves bytes between Envoy and the connection engine and
//! applies its verdicts; reports metrics and audit lines; fetches remote JWKS.
//!
//! What a network filter can and cannot do in Envoy is recorded in
//! shared/reference/envoy-istio-proxy-wasm.md: the peer certificate is known from the client's
//! first bytes on (§C1); a close requested in the callback that writes an `-ERR` loses it, so
//! closes are deferred to the root context's tick (§A5, §B); held client bytes can be replaced
//! and released from another callback while the stream is paused.

mod host;
mod metrics;
mod shared_jwks;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

use crate::engine::{AuditEvent, Close, Connection, EventKind, Forward, Gate, Report, Verdict};
use crate::identity::{Authenticator, ProxySigner, RemoteJwksConfig};
use crate::policy::{self, TrustedProxySeed};

/// The root context's period: deferred closes, token expiry, JWKS refresh.
const TICK: Duration = Duration::from_millis(50);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed JWKS fetch, no VM fetches that provider again for this long (never hammer a
/// failing IdP).
const JWKS_RETRY: Duration = Duration::from_secs(2);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

thread_local! {
    /// Connections of this VM by context id, for the root context's tick.
    static CONNECTIONS: RefCell<BTreeMap<u32, Weak<RefCell<Connection>>>> = const { RefCell::new(BTreeMap::new()) };
    /// Connections to close once the callback that wrote their last bytes returned.
    static PENDING_CLOSES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Root {
    gate: Option<Rc<Gate>>,
    /// In-flight JWKS fetches: call token → provider name.
    fetches: BTreeMap<u32, String>,
    /// Version of each provider's shared JWKS document this VM applied.
    applied_jwks: BTreeMap<String, u32>,
}

fn now() -> Duration {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn log(level: LogLevel, message: &str) {
    let _ = proxy_wasm::hostcalls::log(level, message);
}

impl Root {
    fn load(&self, configuration: &[u8]) -> Result<Gate, String> {
        let json = std::str::from_utf8(configuration)
            .map_err(|_| "configuration is not UTF-8".to_string())?;
        let loaded = policy::load(json).map_err(|error| error.to_string())?;
        for warning in &loaded.warnings {
            log(LogLevel::Warn, &format!("natsguard: {warning}"));
        }
        let authenticator = Authenticator::new(loaded.policy.identity_config())
            .map_err(|issue| format!("identity.{}: {}", issue.path, issue.reason))?;
        let proxy_signer = match loaded.policy.trusted_proxy() {
            None => None,
            Some(TrustedProxySeed::Seed(seed)) => Some(
                ProxySigner::from_seed(seed)
                    .map_err(|e| format!("trusted_proxy.seed: {}", e.reason()))?,
            ),
            Some(TrustedProxySeed::Env(name)) => {
                let seed = std::env::var(name).map_err(|_| {
                    format!(
                        "trusted_proxy.seed_env: environment variable {name} is not set for the VM"
                    )
                })?;
                Some(
                    ProxySigner::from_seed(seed.trim())
                        .map_err(|e| format!("trusted_proxy.seed_env: {}", e.reason()))?,
                )
            }
        };
        Ok(Gate {
            policy: loaded.policy,
            authenticator: RefCell::new(authenticator),
            proxy_signer,
        })
    }

    fn fetch_due_jwks(&mut self) {
        let Some(gate) = &self.gate else { return };
        let now = now();
        let now_secs = now.as_secs();
        let due: Vec<(String, RemoteJwksConfig)> = {
            let authenticator = gate.authenticator.borrow();
            let sources: BTreeMap<&str, &RemoteJwksConfig> =
                authenticator.remote_jwks_sources().into_iter().collect();
            authenticator
                .remote_jwks_due(now_secs)
                .into_iter()
                .filter(|provider| !self.fetches.values().any(|p| p == provider))
                .filter(|provider| {
                    shared_jwks::take_lease(provider, now, JWKS_FETCH_TIMEOUT + TICK)
                })
                .filter_map(|provider| {
                    sources
                        .get(provider)
                        .map(|source| (provider.to_string(), (*source).clone()))
                })
                .collect()
        };
        for (provider, source) in due {
            let headers = vec![
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
            ];
            match self.dispatch_http_call(
                &source.cluster,
                headers,
                None,
                vec![],
                JWKS_FETCH_TIMEOUT,
            ) {
                Ok(token) => {
                    self.fetches.insert(token, provider);
                }
                Err(status) => {
                    metrics::count("jwks_refresh_failed");
                    shared_jwks::back_off(&provider, now, JWKS_RETRY);
                    log(LogLevel::Warn, &format!("natsguard: JWKS fetch for provider {provider} from cluster {} not dispatched: {status:?}", source.cluster));
                }
            }
        }
    }

    /// Applies JWKS documents another VM fetched.
    fn adopt_shared_jwks(&mut self) {
        let Some(gate) = &self.gate else { return };
        let providers: Vec<String> = gate
            .authenticator
            .borrow()
            .remote_jwks_sources()
            .into_iter()
            .map(|(provider, _)| provider.to_string())
            .collect();
        for provider in providers {
            let seen = self.applied_jwks.get(&provider).copied();
            let Some((document, version)) = shared_jwks::newer_than(&provider, seen) else {
                continue;
            };
            self.applied_jwks.insert(provider.clone(), version);
            // Only good documents are published, so this cannot fail on a document another VM
            // accepted; if it does, the last good keys stay.
            let _ = gate.authenticator.borrow_mut().update_remote_jwks(
                &provider,
                &document,
                now().as_secs(),
            );
        }
    }

    /// Deferred closes, and retries of connections waiting for keys; on a tick also expiries.
    fn service_connections(&self, tick: bool) {
        for id in PENDING_CLOSES.with(|closes| std::mem::take(&mut *closes.borrow_mut())) {
            if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                let _ = host::close_connection();
            }
        }
        let live: Vec<(u32, Rc<RefCell<Connection>>)> = CONNECTIONS.with(|connections| {
            let mut connections = connections.borrow_mut();
            connections.retain(|_, weak| weak.strong_count() > 0);
            connections
                .iter()
                .filter_map(|(id, weak)| Some((*id, weak.upgrade()?)))
                .collect()
        });
        let now = now();
        for (id, connection) in live {
            let mut connection = connection.borrow_mut();
            if connection.is_awaiting_keys() {
                if let Some(verdict) = connection.resume(now) {
                    if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                        release_held(verdict);
                    }
                }
            } else if tick {
                if let Some(close) = connection.tick(now) {
                    if proxy_wasm::hostcalls::set_effective_context(id).is_ok()
                        && close == Close::Now
                    {
                        let _ = host::close_connection();
                    }
                }
            }
            publish(&mut connection);
        }
    }
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

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(provider) = self.fetches.remove(&token) else {
            return;
        };
        let Some(gate) = self.gate.clone() else {
            return;
        };
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let result = if status == "200" {
            gate.authenticator
                .borrow_mut()
                .update_remote_jwks(&provider, &body, now().as_secs())
                .map_err(|e| e.to_string())
        } else {
            Err(format!("HTTP status {status}"))
        };
        match result {
            Ok(()) => {
                if let Some(version) = shared_jwks::publish(&provider, &body) {
                    self.applied_jwks.insert(provider.clone(), version);
                }
                metrics::count("jwks_refresh_ok");
                log(
                    LogLevel::Info,
                    &format!("natsguard: JWKS of provider {provider} refreshed"),
                );
                self.service_connections(false);
            }
            Err(reason) => {
                shared_jwks::back_off(&provider, now(), JWKS_RETRY);
                metrics::count("jwks_refresh_failed");
                log(LogLevel::Warn, &format!("natsguard: JWKS refresh of provider {provider} failed ({reason}); keeping the last good keys"));
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        match self.load(&configuration) {
            Ok(gate) => {
                self.gate = Some(Rc::new(gate));
                self.set_tick_period(TICK);
                true
            }
            Err(reason) => {
                // Returning false fails the plugin: Envoy refuses traffic on the listener.
                log(
                    LogLevel::Critical,
                    &format!("natsguard: configuration rejected, refusing to start: {reason}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.adopt_shared_jwks();
        self.service_connections(true);
        self.fetch_due_jwks();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        let gate = Rc::clone(self.gate.as_ref()?);
        let connection = Rc::new(RefCell::new(Connection::new(gate)));
        CONNECTIONS.with(|connections| {
            connections
                .borrow_mut()
                .insert(context_id, Rc::downgrade(&connection))
        });
        Some(Box::new(Stream {
            id: context_id,
            connection,
            identity_read: false,
        }))
    }
}

struct Stream {
    id: u32,
    connection: Rc<RefCell<Connection>>,
    identity_read: bool,
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
            (Ok(()), Some(Close::AfterWrite)) => {
                PENDING_CLOSES.with(|closes| closes.borrow_mut().push(self.id))
            }
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
        publish(&mut connection);
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
        publish(&mut connection);
        action
    }

    fn on_log(&mut self) {
        let mut connection = self.connection.borrow_mut();
        let end = connection.connection_end();
        publish(&mut connection);
        log(LogLevel::Info, &end.json);
        CONNECTIONS.with(|connections| connections.borrow_mut().remove(&self.id));
    }
}

/// Counts and logs what the connection reported, and records the identity and decision in
/// Envoy's filter state for access logs (`%FILTER_STATE(wasm.natsguard_identity:PLAIN)%`).
fn publish(connection: &mut Connection) {
    let Report { counters, events } = connection.take_report();
    metrics::count_frames(&counters);
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
        EventKind::Deny | EventKind::ConnectionEnd => {}
    }
}
