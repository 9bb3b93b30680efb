//! Root contexts: one per configuration of a plugin in this VM. Which one decides a plugin's
//! connections, the VM's single tick, and the remote JWKS fetches.
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
//! per plugin in shared data ([`policy_record`]); on every tick the root context holding the
//! recorded configuration becomes its plugin's current one. Root contexts therefore keep their
//! configuration for as long as Envoy keeps them.
//!
//! One root context per VM ticks and does every root context's periodic work: Envoy keeps a
//! timer for each root context that ever set a tick period, also after it ended
//! (`Wasm::setTimerPeriod`), which a tick per configuration would pile up.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, LogLevel};

use super::{
    host, log, metrics, now,
    policy_record::{self, Recorded},
    publish, record_policy_version, release_held, shared_jwks, Stream,
};
use crate::engine::{Close, Connection, Gate};
use crate::identity::RemoteJwksConfig;
use crate::policy;

/// The VM's tick: deferred closes, token expiry, JWKS refresh, configuration changes.
const TICK: Duration = Duration::from_millis(50);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed JWKS fetch, no VM fetches that provider again for this long (never hammer a
/// failing IdP).
const JWKS_RETRY: Duration = Duration::from_secs(2);

/// A plugin as Envoy names it: the filter configuration's `name` and `root_id` (in Istio, one
/// `WasmPlugin`). A VM may hold root contexts of several plugins (Istio gives every WasmPlugin
/// the same VM); a newer configuration only takes over connections of its own plugin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Plugin {
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

/// One accepted configuration of a plugin.
struct Configured {
    plugin: Rc<Plugin>,
    gate: Rc<Gate>,
    /// Version of each source's shared JWKS document applied to `gate`.
    applied_jwks: BTreeMap<String, u32>,
}

/// A connection of this VM, and the plugin whose configurations decide it.
struct Tracked {
    plugin: Rc<Plugin>,
    connection: std::rc::Weak<RefCell<Connection>>,
}

thread_local! {
    /// Accepted configurations by root context id.
    static CONFIGURED: RefCell<BTreeMap<u32, Configured>> = const { RefCell::new(BTreeMap::new()) };
    /// The root context whose configuration decides each plugin's connections.
    static CURRENT: RefCell<BTreeMap<Plugin, u32>> = const { RefCell::new(BTreeMap::new()) };
    /// The root context that ticks for the whole VM.
    static TICKER: Cell<Option<u32>> = const { Cell::new(None) };
    /// Connections of this VM by context id.
    static CONNECTIONS: RefCell<BTreeMap<u32, Tracked>> = const { RefCell::new(BTreeMap::new()) };
    /// Connections to close once the callback that wrote their last bytes returned.
    static PENDING_CLOSES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// In-flight JWKS fetches (all dispatched by the ticker): call token → root context and
    /// provider they fetch for.
    static FETCHES: RefCell<BTreeMap<u32, (u32, String, RemoteJwksConfig)>> = const { RefCell::new(BTreeMap::new()) };
}

/// Closes the connection once the callback that wrote its last bytes returned.
pub(super) fn close_later(stream: u32) {
    PENDING_CLOSES.with(|closes| closes.borrow_mut().push(stream));
}

/// The stream context's connection ended.
pub(super) fn forget_connection(stream: u32) {
    CONNECTIONS.with(|connections| connections.borrow_mut().remove(&stream));
    metrics::forget_connection(stream);
}

fn gate_of(root: u32) -> Option<Rc<Gate>> {
    CONFIGURED.with(|configured| configured.borrow().get(&root).map(|c| Rc::clone(&c.gate)))
}

fn plugin_of(root: u32) -> Option<Rc<Plugin>> {
    CONFIGURED.with(|configured| configured.borrow().get(&root).map(|c| Rc::clone(&c.plugin)))
}

fn current_root(plugin: &Plugin) -> Option<u32> {
    CURRENT.with(|current| current.borrow().get(plugin).copied())
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

/// The gate of a configuration, and the lint warnings to log about it.
fn load(configuration: &[u8]) -> Result<(Gate, Vec<policy::Warning>), String> {
    let json =
        std::str::from_utf8(configuration).map_err(|_| "configuration is not UTF-8".to_string())?;
    Gate::load(json, &|name| {
        std::env::var(name)
            .map(Some)
            .map_err(|_| format!("environment variable {name} is not set for the VM"))
    })
}

/// Makes the following host calls those of root context `root` (after calls made on behalf
/// of connections).
fn act_as(root: u32) {
    let _ = proxy_wasm::hostcalls::set_effective_context(root);
}

/// Root context `root`'s configuration decides its plugin's connections from now on: it takes
/// over the open ones (the engine re-evaluates each; what it must tell the client and the
/// server goes with their next bytes).
fn become_current(root: u32) {
    let (Some(plugin), Some(gate)) = (plugin_of(root), gate_of(root)) else {
        return;
    };
    CURRENT.with(|current| current.borrow_mut().insert((*plugin).clone(), root));
    // The token of an open connection is verified again with keys fetched under the earlier
    // configuration, when their source did not change.
    adopt_shared_jwks(root);
    let now = now();
    let mut adopted = 0;
    for (id, connection) in connections_of(&plugin) {
        let mut connection = connection.borrow_mut();
        if connection.is_decided_by(&gate) {
            continue;
        }
        connection.adopt(Rc::clone(&gate), now);
        adopted += 1;
        if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
            record_policy_version(&connection);
        }
        publish(id, &mut connection);
    }
    act_as(root);
    log(
        LogLevel::Info,
        &format!(
            "natsguard: configuration {} applied to {adopted} open connections",
            gate.policy.version()
        ),
    );
}

/// Root contexts whose configuration Envoy applies (the one configured last in the process)
/// although another is current here: Envoy went back to it without telling it.
fn reinstated_roots() -> Vec<u32> {
    let configured: Vec<(u32, Rc<Plugin>, String)> = CONFIGURED.with(|configured| {
        configured
            .borrow()
            .iter()
            .map(|(root, c)| {
                (
                    *root,
                    Rc::clone(&c.plugin),
                    c.gate.policy.version().to_owned(),
                )
            })
            .collect()
    });
    let mut reinstated: BTreeMap<Plugin, u32> = BTreeMap::new();
    for (root, plugin, version) in configured {
        let Some(recorded) = policy_record::recorded(&plugin.name, &plugin.root_id) else {
            continue;
        };
        let current_version = current_root(&plugin)
            .and_then(gate_of)
            .map(|gate| gate.policy.version().to_owned());
        if version == recorded && current_version.as_deref() != Some(recorded.as_str()) {
            reinstated.insert((*plugin).clone(), root);
        }
    }
    reinstated.into_values().collect()
}

/// For each plugin whose current root context ended while none holds the recorded
/// configuration: its newest configuration here (root context ids only grow).
fn orphaned_plugins() -> Vec<u32> {
    CONFIGURED.with(|configured| {
        let mut newest: BTreeMap<Plugin, u32> = BTreeMap::new();
        for (root, c) in configured.borrow().iter() {
            if current_root(&c.plugin).is_none() {
                newest.insert((*c.plugin).clone(), *root);
            }
        }
        newest.into_values().collect()
    })
}

/// The remote key sets a configuration fetches (its shadow policy's included), once each.
fn remote_sources(gate: &Gate) -> Vec<(String, RemoteJwksConfig)> {
    let mut sources: Vec<(String, RemoteJwksConfig)> = Vec::new();
    for authenticator in gate.authenticators() {
        for (provider, source) in authenticator.borrow().remote_jwks_sources() {
            if !sources.iter().any(|(p, s)| p == provider && s == source) {
                sources.push((provider.to_string(), source.clone()));
            }
        }
    }
    sources
}

/// Applies a fetched key set to every authenticator of `gate` that takes `provider` from
/// `source`; the first error when one refuses it (its last good keys stay).
fn apply_jwks(
    gate: &Gate,
    provider: &str,
    source: &RemoteJwksConfig,
    document: &[u8],
) -> Result<(), String> {
    let mut result = Ok(());
    for authenticator in gate.authenticators() {
        let fetches_it = authenticator
            .borrow()
            .remote_jwks_sources()
            .into_iter()
            .any(|(p, s)| p == provider && s == source);
        if fetches_it {
            let applied = authenticator
                .borrow_mut()
                .update_remote_jwks(provider, document, now().as_secs())
                .map_err(|e| e.to_string());
            result = result.and(applied);
        }
    }
    result
}

/// Applies JWKS documents any VM fetched (under this or an earlier configuration) from the
/// same source to root context `root`'s configuration.
fn adopt_shared_jwks(root: u32) {
    CONFIGURED.with(|configured| {
        let mut configured = configured.borrow_mut();
        let Some(configured) = configured.get_mut(&root) else {
            return;
        };
        for (provider, source) in remote_sources(&configured.gate) {
            let key = applied_key(&provider, &source);
            let seen = configured.applied_jwks.get(&key).copied();
            let Some((document, version)) = shared_jwks::newer_than(&provider, &source, seen)
            else {
                continue;
            };
            configured.applied_jwks.insert(key, version);
            // Only good documents are published, so this cannot fail on a document another VM
            // accepted; if it does, the last good keys stay.
            let _ = apply_jwks(&configured.gate, &provider, &source, &document);
        }
    });
}

fn applied_key(provider: &str, source: &RemoteJwksConfig) -> String {
    format!(
        "{provider}\n{}\n{}\n{}",
        source.cluster, source.authority, source.path
    )
}

/// Retries of `plugin`'s connections waiting for keys; on a tick also expiries and tokens
/// still to verify under a newer configuration.
fn service_connections(plugin: &Plugin, tick: bool) {
    let now = now();
    for (id, connection) in connections_of(plugin) {
        let mut connection = connection.borrow_mut();
        if connection.is_awaiting_keys() {
            if let Some(verdict) = connection.resume(now) {
                if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                    release_held(verdict);
                }
            }
        } else if tick {
            if let Some(close) = connection.tick(now) {
                if proxy_wasm::hostcalls::set_effective_context(id).is_ok() && close == Close::Now {
                    let _ = host::close_connection();
                }
            }
        }
        publish(id, &mut connection);
    }
}

/// The root context of a configuration of a plugin; the SDK owns it, its state lives in
/// [`CONFIGURED`].
pub(super) struct Root {
    pub(super) context_id: u32,
}

impl Root {
    /// Remote JWKS due for the current configuration of every plugin, fetched through Envoy by
    /// this (the ticking) root context.
    fn fetch_due_jwks(&mut self) {
        let now = now();
        let current: Vec<u32> =
            CURRENT.with(|current| current.borrow().values().copied().collect());
        for root in current {
            let Some(gate) = gate_of(root) else { continue };
            let mut due: Vec<(String, RemoteJwksConfig)> = Vec::new();
            for authenticator in gate.authenticators() {
                let authenticator = authenticator.borrow();
                let sources = authenticator.remote_jwks_sources();
                for provider in authenticator.remote_jwks_due(now.as_secs()) {
                    let Some((_, source)) = sources.iter().find(|(p, _)| *p == provider) else {
                        continue;
                    };
                    let fetching = FETCHES.with(|fetches| {
                        fetches
                            .borrow()
                            .values()
                            .any(|(owner, p, s)| *owner == root && p == provider && s == *source)
                    });
                    let listed = due.iter().any(|(p, s)| p == provider && s == *source);
                    if !fetching
                        && !listed
                        && shared_jwks::take_lease(provider, source, now, JWKS_FETCH_TIMEOUT + TICK)
                    {
                        due.push((provider.to_string(), (*source).clone()));
                    }
                }
            }
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
                        FETCHES.with(|fetches| {
                            fetches.borrow_mut().insert(token, (root, provider, source))
                        });
                    }
                    Err(status) => {
                        metrics::count("jwks_refresh_failed");
                        shared_jwks::back_off(&provider, &source, now, JWKS_RETRY);
                        log(LogLevel::Warn, &format!("natsguard: JWKS fetch for provider {provider} from cluster {} not dispatched: {status:?}", source.cluster));
                    }
                }
            }
        }
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
        let Some((root, provider, source)) =
            FETCHES.with(|fetches| fetches.borrow_mut().remove(&token))
        else {
            return;
        };
        let (Some(gate), Some(plugin)) = (gate_of(root), plugin_of(root)) else {
            return;
        };
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let result = if status == "200" {
            apply_jwks(&gate, &provider, &source, &body)
        } else {
            Err(format!("HTTP status {status}"))
        };
        match result {
            Ok(()) => {
                if let Some(version) = shared_jwks::publish(&provider, &source, &body) {
                    CONFIGURED.with(|configured| {
                        if let Some(configured) = configured.borrow_mut().get_mut(&root) {
                            configured
                                .applied_jwks
                                .insert(applied_key(&provider, &source), version);
                        }
                    });
                }
                metrics::count("jwks_refresh_ok");
                log(
                    LogLevel::Info,
                    &format!("natsguard: JWKS of provider {provider} refreshed"),
                );
                if current_root(&plugin) == Some(root) {
                    service_connections(&plugin, false);
                    act_as(self.context_id);
                }
            }
            Err(reason) => {
                shared_jwks::back_off(&provider, &source, now(), JWKS_RETRY);
                metrics::count("jwks_refresh_failed");
                log(LogLevel::Warn, &format!("natsguard: JWKS refresh of provider {provider} failed ({reason}); keeping the last good keys"));
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        let (gate, warnings) = match load(&configuration) {
            Ok((gate, warnings)) => (Rc::new(gate), warnings),
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
        let plugin = Rc::new(Plugin::of_current_root());
        let recorded = policy_record::record(&plugin.name, &plugin.root_id, gate.policy.version());
        if recorded == Recorded::Replaced {
            metrics::count("policy_updates");
        }
        // Said once per Envoy, by the VM that recorded the configuration first.
        if recorded != Recorded::Already {
            for warning in &warnings {
                log(LogLevel::Warn, &format!("natsguard: {warning}"));
            }
        }
        CONFIGURED.with(|configured| {
            configured.borrow_mut().insert(
                self.context_id,
                Configured {
                    plugin: Rc::clone(&plugin),
                    gate,
                    applied_jwks: BTreeMap::new(),
                },
            )
        });
        if current_root(&plugin).is_some() {
            become_current(self.context_id);
        } else {
            CURRENT.with(|current| {
                current
                    .borrow_mut()
                    .insert((*plugin).clone(), self.context_id)
            });
            adopt_shared_jwks(self.context_id);
        }
        if TICKER.get().is_none() {
            self.set_tick_period(TICK);
            TICKER.set(Some(self.context_id));
        }
        true
    }

    fn on_tick(&mut self) {
        metrics::report_vm_memory();
        for id in PENDING_CLOSES.with(|closes| std::mem::take(&mut *closes.borrow_mut())) {
            if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                let _ = host::close_connection();
            }
        }
        for root in reinstated_roots() {
            become_current(root);
        }
        for root in orphaned_plugins() {
            CURRENT.with(|current| {
                if let Some(plugin) = plugin_of(root) {
                    current.borrow_mut().insert((*plugin).clone(), root);
                }
            });
        }
        let current: Vec<u32> =
            CURRENT.with(|current| current.borrow().values().copied().collect());
        for root in current {
            adopt_shared_jwks(root);
            if let Some(plugin) = plugin_of(root) {
                service_connections(&plugin, true);
            }
        }
        act_as(self.context_id);
        self.fetch_due_jwks();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        let plugin = plugin_of(self.context_id)?;
        // The older configuration's filter chain may still create connections for a moment
        // after a newer one was accepted: they start under the current one.
        let gate = current_root(&plugin)
            .and_then(gate_of)
            .or_else(|| gate_of(self.context_id))?;
        let connection = Rc::new(RefCell::new(Connection::new(gate)));
        CONNECTIONS.with(|connections| {
            connections.borrow_mut().insert(
                context_id,
                Tracked {
                    plugin,
                    connection: Rc::downgrade(&connection),
                },
            )
        });
        Some(Box::new(Stream::new(context_id, connection)))
    }
}

impl Drop for Root {
    /// Envoy ends a root context when nothing holds its plugin any more: its configuration
    /// goes, another one of the plugin takes over on the next tick, and the tick passes on.
    fn drop(&mut self) {
        let plugin = CONFIGURED.with(|configured| {
            configured
                .borrow_mut()
                .remove(&self.context_id)
                .map(|c| c.plugin)
        });
        if let Some(plugin) = plugin {
            CURRENT.with(|current| {
                let mut current = current.borrow_mut();
                if current.get(&*plugin) == Some(&self.context_id) {
                    current.remove(&*plugin);
                }
            });
        }
        if TICKER.get() == Some(self.context_id) {
            let heir = CONFIGURED.with(|configured| configured.borrow().keys().next().copied());
            TICKER.set(None);
            if let Some(heir) = heir {
                if proxy_wasm::hostcalls::set_effective_context(heir).is_ok()
                    && proxy_wasm::hostcalls::set_tick_period(TICK).is_ok()
                {
                    TICKER.set(Some(heir));
                }
            }
        }
    }
}
