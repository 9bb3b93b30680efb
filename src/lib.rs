//! natsguard: identity-aware NATS for Envoy and Istio.
//!
//! Everything natsguard decides is a pure function of bytes, time and configuration. The
//! proxy-wasm layer (`filter`, wasm32 only) moves bytes between Envoy and the host-testable
//! connection engine, and applies the effects the engine asks for.
//!
//! Dependencies point down: `filter` → `engine` → {`protocol`, `policy`, `identity`}.

#[cfg(not(target_arch = "wasm32"))]
pub mod command;
#[cfg(not(target_arch = "wasm32"))]
pub mod ecds;
pub mod engine;
pub mod identity;
#[cfg(not(target_arch = "wasm32"))]
pub mod import;
pub mod policy;
pub mod protocol;

#[cfg(target_arch = "wasm32")]
mod filter;
