//! The built-in alert rule engine: rules over the agent's own metrics,
//! evaluated on the node (no Prometheus needed), delivered to Alertmanager
//! (API v2) and JSON webhooks. See docs/alerts.md.

pub mod config;
pub mod engine;
pub mod eval;
pub mod expr;
pub mod notify;
pub mod rules;
pub mod state;
pub mod store;
pub mod template;

pub use config::AlertsConfig;
pub use engine::{AlertEngine, AlertsReport};
