//! proxy-wasm glue (wasm32 only): moves bytes between Envoy and the connection engine and
//! applies its verdicts; reports metrics and audit lines; fetches remote JWKS.
//!
//! What a network filter can and cannot do in Envoy is recorded in
//! shared/reference/envoy-istio-proxy-wasm.md: the peer certificate is known from the client's
//! first bytes on (§C1); a close requested in the callback that writes an `-ERR` loses it, so
//! closes are deferred to the root context's tick (§A5, §B); held client bytes can be replaced
//! and released from another callback while the stream is paused.
//!
//! A new configuration of the plugin (Envoy's ECDS, how Istio delivers a `WasmPlugin`) arrives
//! as a new root context in the same VM (§I2). It takes over the open connections of the same
//! plugin — same `name` and `root_id`, never another plugin's — and hands each to the engine
//! ([`Connection::adopt`]); connections that the older configuration's filter chain still
//! creates get the current configuration too.
//!
//! A configuration delivered again (a rollback) while connections created under it are open
//! reuses its root context on the worker threads without calling it at all: proxy-wasm keeps a
//! plugin while anything holds it. But every delivered configuration is configured somewhere in
//! Envoy's process (its canary VM, the main thread's VM), so the process records the newest one
//! per plugin in shared data ([`policy_record`]); on every tick each root context checks it, and
//! the one holding the recorded configuration becomes its plugin's current root context.

mod host;
mod metrics;
mod policy_record;
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
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            plugin: Rc::new(Plugin { name: String::new(), root_id: String::new() }),
            gate: None,
            fetches: BTreeMap::new(),
            applied_jwks: BTreeMap::new(),
        })
    });
}}

/// A plugin as Envoy names it: the filter configuration's `name` and `root_id` (in Istio, one
/// `WasmPlugin`). A VM may hold root contexts of several plugins (Istio gives every WasmPlugin
/// the same VM); a newer configuration only takes over connections of its own plugin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Plugin {
    name: String,
    root_id: String,
}

impl Plugin {
    /// The plugin of the root context running the current callback.
    fn of_current_root() -> Plugin {
        let property = |name: &str| {
            proxy_wasm::hostcalls::get_property(vec![name])
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_default()
        };
        Plugin {
            name: property("plugin_name"),
            root_id: property("plugin_root_id"),
        }
    }
}

/// The root context whose configuration decides a plugin's connections in this VM.
struct Current {
    root: u32,
    gate: Rc<Gate>,
}

struct Tracked {
    plugin: Rc<Plugin>,
    connection: Weak<RefCell<Connection>>,
}

thread_local! {
    /// Connections of this VM by context id, for the root contexts' ticks and for a newer
    /// configuration of their plugin.
    static CONNECTIONS: RefCell<BTreeMap<u32, Tracked>> = const { RefCell::new(BTreeMap::new()) };
    /// Connections to close once the callback that wrote their last bytes returned.
    static PENDING_CLOSES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static CURRENT: RefCell<BTreeMap<Plugin, Current>> = const { RefCell::new(BTreeMap::new()) };
}

fn current_gate(plugin: &Plugin) -> Option<Rc<Gate>> {
    CURRENT.with(|current| {
        current
            .borrow()
            .get(plugin)
            .map(|current| Rc::clone(&current.gate))
    })
}

/// The open connections of `plugin` in this VM.
fn connections_of(plugin: &Plugin) -> Vec<(u32, Rc<RefCell<Connection>>)> {
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        connections.retain(|_, tracked| tracked.connection.strong_count() > 0);
        connections
            .iter()
            .filter(|(_, tracked)| *tracked.plugin == *plugin)
            .filter_map(|(id, tracked)| Some((*id, tracked.connection.upgrade()?)))
            .collect()
    })
}

struct Root {
    context_id: u32,
    plugin: Rc<Plugin>,
    /// This root context's configuration, once accepted. Kept while the root context lives:
    /// Envoy may make it current again without calling it (see the module's documentation).
    gate: Option<Rc<Gate>>,
    /// In-flight JWKS fetches: call token → provider name.
    fetches: BTreeMap<u32, String>,
    /// Version of each provider's shared JWKS document this root context applied.
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

    /// Whether this root context's configuration decides its plugin's connections in this VM.
    fn is_current(&self) -> bool {
        CURRENT.with(|current| {
            current
                .borrow()
                .get(&*self.plugin)
                .is_some_and(|current| current.root == self.context_id)
        })
    }

    /// This root context's configuration decides its plugin's connections from now on: it takes
    /// over the open ones.
    fn become_current(&mut self) {
        let Some(gate) = self.gate.clone() else {
            return;
        };
        CURRENT.with(|current| {
            current.borrow_mut().insert(
                (*self.plugin).clone(),
                Current {
                    root: self.context_id,
                    gate: Rc::clone(&gate),
                },
            )
        });
        // The token of an open connection is verified again with keys fetched under the
        // earlier configuration, when their source did not change.
        self.adopt_shared_jwks();
        let adopted = self.take_over_connections(&gate);
        log(
            LogLevel::Info,
            &format!(
                "natsguard: configuration {} applied to {adopted} open connections",
                gate.policy.version()
            ),
        );
    }

    fn holds_recorded_configuration(&self) -> bool {
        let recorded = policy_record::recorded(&self.plugin.name, &self.plugin.root_id);
        match (&self.gate, recorded) {
            (Some(gate), Some(recorded)) => gate.policy.version() == recorded,
            _ => false,
        }
    }

    /// Whether the configuration Envoy applies to the plugin (the one configured last in the
    /// process) is another than the current root context's here.
    fn current_is_outdated(&self) -> bool {
        let Some(recorded) = policy_record::recorded(&self.plugin.name, &self.plugin.root_id)
        else {
            return false;
        };
        let current = current_gate(&self.plugin);
        current.is_none_or(|gate| gate.policy.version() != recorded)
    }

    /// Makes the following host calls this root context's again (after calls made on behalf of
    /// connections): an HTTP call is owned by the effective context's root.
    fn act_as_root(&self) {
        let _ = proxy_wasm::hostcalls::set_effective_context(self.context_id);
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
                .filter_map(|provider| {
                    sources
                        .get(provider)
                        .map(|source| (provider.to_string(), (*source).clone()))
                })
                .filter(|(provider, source)| {
                    shared_jwks::take_lease(provider, source, now, JWKS_FETCH_TIMEOUT + TICK)
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
                    shared_jwks::back_off(&provider, &source, now, JWKS_RETRY);
                    log(LogLevel::Warn, &format!("natsguard: JWKS fetch for provider {provider} from cluster {} not dispatched: {status:?}", source.cluster));
                }
            }
        }
    }

    /// Applies JWKS documents any VM fetched (under this or an earlier configuration) from the
    /// same source.
    fn adopt_shared_jwks(&mut self) {
        let Some(gate) = &self.gate else { return };
        let sources: Vec<(String, RemoteJwksConfig)> = gate
            .authenticator
            .borrow()
            .remote_jwks_sources()
            .into_iter()
            .map(|(provider, source)| (provider.to_string(), source.clone()))
            .collect();
        for (provider, source) in sources {
            let seen = self.applied_jwks.get(&provider).copied();
            let Some((document, version)) = shared_jwks::newer_than(&provider, &source, seen)
            else {
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

    /// Deferred closes, and retries of this plugin's connections waiting for keys; on a tick
    /// also expiries and tokens still to verify under a newer configuration.
    fn service_connections(&self, tick: bool) {
        for id in PENDING_CLOSES.with(|closes| std::mem::take(&mut *closes.borrow_mut())) {
            if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                let _ = host::close_connection();
            }
        }
        let now = now();
        for (id, connection) in connections_of(&self.plugin) {
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
        self.act_as_root();
    }

    /// A newer configuration was accepted: the plugin's open connections are decided by it
    /// from now on (the engine re-evaluates each; what it must tell the client and the server
    /// goes with their next bytes).
    fn take_over_connections(&self, gate: &Rc<Gate>) -> usize {
        let now = now();
        let mut adopted = 0;
        for (id, connection) in connections_of(&self.plugin) {
            let mut connection = connection.borrow_mut();
            if connection.is_decided_by(gate) {
                continue;
            }
            connection.adopt(Rc::clone(gate), now);
            adopted += 1;
            if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                record_policy_version(&connection);
            }
            publish(&mut connection);
        }
        self.act_as_root();
        adopted
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
        let source = gate
            .authenticator
            .borrow()
            .remote_jwks_sources()
            .into_iter()
            .find(|(name, _)| *name == provider)
            .map(|(_, source)| source.clone());
        let result = match (status.as_str(), &source) {
            ("200", Some(_)) => gate
                .authenticator
                .borrow_mut()
                .update_remote_jwks(&provider, &body, now().as_secs())
                .map_err(|e| e.to_string()),
            ("200", None) => Err("the provider is no longer configured".to_string()),
            _ => Err(format!("HTTP status {status}")),
        };
        match (result, source) {
            (Ok(()), Some(source)) => {
                // A superseded root context's fetch still serves the newest configuration: it
                // adopts the document from shared data.
                if let Some(version) = shared_jwks::publish(&provider, &source, &body) {
                    self.applied_jwks.insert(provider.clone(), version);
                }
                metrics::count("jwks_refresh_ok");
                log(
                    LogLevel::Info,
                    &format!("natsguard: JWKS of provider {provider} refreshed"),
                );
                if self.is_current() {
                    self.service_connections(false);
                }
            }
            (Err(reason), source) => {
                if let Some(source) = &source {
                    shared_jwks::back_off(&provider, source, now(), JWKS_RETRY);
                }
                metrics::count("jwks_refresh_failed");
                log(LogLevel::Warn, &format!("natsguard: JWKS refresh of provider {provider} failed ({reason}); keeping the last good keys"));
            }
            (Ok(()), None) => {}
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        let gate = match self.load(&configuration) {
            Ok(gate) => Rc::new(gate),
            Err(reason) => {
                // Returning false rejects the configuration: Envoy refuses traffic on the
                // listener at start, and keeps the last good configuration on an update.
                log(
                    LogLevel::Critical,
                    &format!("natsguard: configuration rejected: {reason}"),
                );
                return false;
            }
        };
        self.plugin = Rc::new(Plugin::of_current_root());
        if policy_record::record(
            &self.plugin.name,
            &self.plugin.root_id,
            gate.policy.version(),
        ) {
            metrics::count("policy_updates");
        }
        let first = current_gate(&self.plugin).is_none();
        self.gate = Some(gate);
        self.set_tick_period(TICK);
        if first {
            CURRENT.with(|current| {
                current.borrow_mut().insert(
                    (*self.plugin).clone(),
                    Current {
                        root: self.context_id,
                        gate: self.gate.clone().expect("just set"),
                    },
                )
            });
            self.adopt_shared_jwks();
        } else {
            self.become_current();
        }
        true
    }

    fn on_tick(&mut self) {
        if self.current_is_outdated() && self.holds_recorded_configuration() {
            // Envoy went back to this root context's configuration without telling it.
            self.become_current();
        }
        if !self.is_current() {
            return;
        }
        self.adopt_shared_jwks();
        self.service_connections(true);
        self.fetch_due_jwks();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        // The older configuration's filter chain may still create connections for a moment
        // after a newer one was accepted: they start under the current one.
        let gate = current_gate(&self.plugin).or_else(|| self.gate.clone())?;
        let connection = Rc::new(RefCell::new(Connection::new(gate)));
        CONNECTIONS.with(|connections| {
            connections.borrow_mut().insert(
                context_id,
                Tracked {
                    plugin: Rc::clone(&self.plugin),
                    connection: Rc::downgrade(&connection),
                },
            )
        });
        Some(Box::new(Stream {
            id: context_id,
            connection,
            identity_read: false,
        }))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Envoy ends a root context when nothing holds its plugin any more; another one takes
        // over on its next tick.
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            if current
                .get(&*self.plugin)
                .is_some_and(|current| current.root == self.context_id)
            {
                current.remove(&*self.plugin);
            }
        });
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
        EventKind::Deny | EventKind::SubscriptionRevoked | EventKind::ConnectionEnd => {}
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
