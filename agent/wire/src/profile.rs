//! `GET /api/v1/profile` (`sonde profile`): the answer is pprof, folded
//! stacks, SVG or a table, never JSON; only the query is typed here.

use serde::{Deserialize, Serialize};

/// Query of `GET /api/v1/profile`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuery {
    pub pid: Option<u32>,
    pub name: Option<String>,
    pub service: Option<String>,
    /// `10s`, `500ms`, `1m`; default 10s.
    pub duration: Option<String>,
    /// Use the retained window instead of waiting.
    #[serde(default)]
    pub last: bool,
    /// pprof (default), folded, svg, top, lines.
    pub format: Option<String>,
    /// With `lines`: only this function's lines.
    pub function: Option<String>,
    /// `route`: split by HTTP route (the route as the first folded frame,
    /// a route table above `top`).
    pub by: Option<String>,
    /// Only samples attributed to a route matching this pattern (`*` is a
    /// wildcard; `METHOD ROUTE` or `ROUTE`; `-` for unattributed samples).
    pub route: Option<String>,
    /// Where threads waited instead of where they ran: samples weighted by
    /// the nanoseconds they were off CPU.
    #[serde(default)]
    pub off_cpu: bool,
}
