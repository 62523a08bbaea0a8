//! The agent's configuration: one TOML file, a built-in default for every key,
//! and `SONDE_<SECTION>__<KEY>` environment overrides.
//!
//! Validation happens while deserializing: every value has a type that
//! checks itself (bounded numbers and durations, the log filter, syscall
//! names, route patterns), so toml's error carries the key and the line of
//! the bad value, `sonde agent --check-config` refuses exactly what the
//! agent would, and collectors get values that are already parsed.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    bounded::Bounded,
    collectors::{http::route::Pattern, syscalls::names::SyscallName},
    duration::Dur,
};

/// Prefix of environment variables that override config keys. A nested key
/// is spelled with `__` between its parts: `SONDE_API__LISTEN=0.0.0.0:9464`.
pub const ENV_PREFIX: &str = "SONDE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config file {path}: {error}")]
    Rule {
        path: String,
        error: crate::alerts::rules::RuleError,
    },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub api: ApiConfig,
    pub collectors: CollectorsConfig,
    pub alerts: crate::alerts::AlertsConfig,
    /// Pod/container identity (docs/deploy.md).
    pub kubernetes: crate::identity::KubernetesConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Log filter in `tracing` syntax, e.g. `info` or `sonde=debug`.
    pub log_level: LogLevel,
    /// `auto` (JSON when stderr is not a terminal), `json` or `text`.
    pub log_format: LogFormat,
    /// Mount tracefs at /sys/kernel/tracing when it is missing and we are root.
    pub mount_tracefs: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            log_level: LogLevel("info".into()),
            log_format: LogFormat::Auto,
            mount_tracefs: true,
        }
    }
}

/// `agent.log_level`: a `tracing` filter directive, checked when read.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(&s)
            .map_err(|e| format!("agent.log_level {s:?}: {e}"))?;
        Ok(Self(s))
    }
}

impl From<LogLevel> for String {
    fn from(l: LogLevel) -> String {
        l.0
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP address for /metrics and /health. Loopback by default.
    pub listen: SocketAddr,
    /// Unix socket for the control API (profiles, stacks: sensitive data).
    pub socket: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// Where the control API listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sonde/sonde.sock";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    pub process: ProcessConfig,
    pub syscalls: SyscallsConfig,
    pub profile: ProfileConfig,
    pub http: HttpConfig,
    pub memory: MemoryConfig,
}

/// `[collectors.memory]`: memory growth by stack from mmap/munmap/mremap/brk
/// tracepoints and sampled user page faults (docs/memory.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    pub enabled: bool,
    /// How often the kernel's counts are drained (and the gauges refreshed).
    pub drain_interval: Dur<1, 300>,
    /// One page fault in this many (per CPU) is sampled with its stack (the
    /// period of a software perf event). 1 samples every fault (costly on
    /// fault-heavy loads).
    pub fault_sample_every: Bounded<1, 65_536>,
    /// Most (process, kind, stack) rows kept for `sonde memory`.
    pub max_rows: Bounded<1024, 10_000_000>,
    /// "auto": tp_btf on the mmap lock (`mmap_lock_acquire_returned`/
    /// `_released`) and on `page_fault_user`, which leave every other
    /// syscall alone; where the kernel lacks them, the "syscall" hooks.
    /// "syscall": tp_btf `sys_exit` (else the per-syscall tracepoints) and
    /// a page-fault perf event with the same period.
    pub hook: MemoryHook,
}

/// `collectors.memory.hook`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MemoryHook {
    Auto,
    Syscall,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            drain_interval: Dur(Duration::from_secs(10)),
            fault_sample_every: Bounded(512),
            max_rows: Bounded(100_000),
            hook: MemoryHook::Auto,
        }
    }
}

/// HTTP RED metrics from socket syscalls (docs/http.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Route patterns tried before the heuristic, e.g. `"/items/{id}"`:
    /// a `{name}` segment matches any one non-empty path segment.
    pub routes: Vec<Pattern>,
    /// Distinct routes per service; more are folded into `http_route="other"`
    /// (and counted in `sonde_http_route_overflow_total`).
    pub max_routes_per_service: Bounded<1, 100_000>,
    /// How long after start-up unknown fds are sniffed for HTTP content, to
    /// pick up connections opened before the agent started. Afterwards only
    /// connections seen in accept/connect are tracked, which makes
    /// unrelated reads and writes cheaper. "0s" never sniffs.
    pub sniff_window: Dur<0, 31_536_000>,
    /// Which hooks to use: "auto" (the socket layer, tp_btf
    /// `sock_send_length`/`sock_recv_length`, where the kernel has them and
    /// on x86_64; else tp_btf `sys_enter`/`sys_exit`; else the per-syscall
    /// tracepoints), "syscall" (skip the socket layer), "tracepoint"
    /// (always the per-syscall tracepoints).
    pub hook: HttpHook,
    /// Connections tracked in the kernel at once (the LRU maps of
    /// connections, their sockets and fresh sockets). Beyond it the least
    /// recently used connection is forgotten: its exchange in flight is
    /// lost, and its later requests are not seen (sniffing aside).
    pub max_connections: Bounded<64, 4_194_304>,
}

/// `collectors.http.hook`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HttpHook {
    Auto,
    Syscall,
    Tracepoint,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            routes: Vec::new(),
            max_routes_per_service: Bounded(200),
            sniff_window: Dur(Duration::from_secs(60)),
            hook: HttpHook::Auto,
            max_connections: Bounded(16_384),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub enabled: bool,
    /// Most live processes tracked; beyond it the oldest entries are evicted
    /// (and counted), so a fork bomb cannot grow the agent without bound.
    pub max_processes: Bounded<64, 4_194_304>,
    /// How long an exited process stays resolvable, so collectors that drain
    /// on an interval can still name its last samples.
    pub exited_grace: Dur<1, 3600>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_processes: Bounded(32_768),
            exited_grace: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[collectors.syscalls]`: per-process syscall counts, errors and latency
/// (docs/syscalls.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallsConfig {
    /// Always-on accounting and the `sonde_syscall*` metrics: every
    /// syscall on the host pays for the hooks (docs/syscalls.md has the
    /// measured cost). Off: the hooks are attached only while `sonde
    /// syscalls` or `sonde top` runs (if `on_demand`).
    pub enabled: bool,
    /// With `enabled = false`: let `sonde syscalls` and `sonde top` attach
    /// the hooks for as long as they run. False forbids it (the hooks are
    /// never attached).
    pub on_demand: bool,
    /// How often the kernel maps are read into metrics and the CLI window.
    pub interval: Dur<1, 60>,
    /// How far back `sonde syscalls` looks.
    pub window: Dur<10, 3600>,
    /// Most (process, syscall) pairs accounted in the kernel at once; new
    /// pairs beyond it are dropped and counted. Memory is up to
    /// max_pairs x 448 bytes x CPUs.
    pub max_pairs: Bounded<256, 1_048_576>,
    /// Most threads with a syscall in flight (LRU: dead threads age out).
    pub max_threads: Bounded<1024, 4_194_304>,
    /// Most (process, syscall, errno) triples counted.
    pub max_errno_pairs: Bounded<64, 1_048_576>,
    /// Syscalls with their own `syscall` label per service; the rest are
    /// folded into `other`.
    pub top_syscalls_per_service: Bounded<1, 512>,
    /// errno values with their own label per (service, syscall).
    pub top_errnos_per_syscall: Bounded<1, 64>,
    /// Services with their own `service_name` label; the rest are `other`.
    pub max_services: Bounded<1, 100_000>,
    /// Trace only these pids (thread-group ids); empty = all. Filtered in
    /// the kernel, so untraced processes cost almost nothing.
    pub pids: Vec<u32>,
    /// Trace only processes of these services (matched on each drain and
    /// added to the kernel pid filter); empty = all.
    pub services: Vec<String>,
    /// Trace only these syscalls (x86_64 names); empty = all.
    pub syscalls: Vec<SyscallName>,
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            on_demand: true,
            interval: Dur(Duration::from_secs(5)),
            window: Dur(Duration::from_secs(60)),
            max_pairs: Bounded(8_192),
            max_threads: Bounded(65_536),
            max_errno_pairs: Bounded(4_096),
            top_syscalls_per_service: Bounded(24),
            top_errnos_per_syscall: Bounded(8),
            max_services: Bounded(500),
            pids: Vec::new(),
            services: Vec::new(),
            syscalls: Vec::new(),
        }
    }
}

/// `[collectors.profile]`: the always-on CPU sampling profiler.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub enabled: bool,
    /// Samples per second per CPU. A prime by default, so sampling does not
    /// beat against periodic work.
    pub frequency_hz: Bounded<1, 1000>,
    /// How much history `sonde profile --last` and the rolling per-service
    /// profiles keep.
    pub window: Dur<1, 3600>,
    /// How often the agent drains the kernel's sample counts.
    pub drain_interval: Dur<1, 60>,
    /// Most ELF files kept open for symbolization (what blazesym parses of
    /// them is dropped after each drain: docs/profiling.md).
    pub max_cached_files: Bounded<8, 65_536>,
    /// Most resolved addresses remembered (per file and kernel).
    pub max_cached_symbols: Bounded<1024, 16_777_216>,
    /// Most processes whose memory maps are remembered.
    pub max_processes: Bounded<16, 1_048_576>,
    /// Most DWARF one file may bring to symbolization, in MiB of
    /// uncompressed `.debug_*` sections; twice this is held at most. A
    /// larger file gets names from its ELF symbols, without lines. 0: never
    /// parse DWARF.
    pub dwarf_budget_mib: Bounded<0, 4096>,
    /// Walk user stacks with DWARF unwind tables (`.eh_frame`) built from
    /// the binaries, for code without frame pointers.
    pub unwind: bool,
    /// Kernel memory for the unwind tables, in MiB (16 bytes per row;
    /// Debian's libc needs 0.43 MiB, python3.11 0.99 MiB). Least recently
    /// used files are evicted beyond it.
    pub unwind_table_budget_mib: Bounded<1, 1024>,
    /// Distinct (process, stacks) keys the kernel counts between two
    /// drains; beyond it samples are dropped and counted
    /// (`counts_map_full`). Two maps of this size (one per generation).
    pub max_keys: Bounded<16, 1_048_576>,
    /// Distinct user or kernel stacks between two drains (1 KiB each);
    /// beyond it a sample loses that stack, counted (`stack_map_full`, and
    /// the unwinder's own `stack_map_full` for DWARF-unwound stacks). Four
    /// maps of this size (frame-pointer and unwound, per generation).
    pub max_stacks: Bounded<16, 262_144>,
    /// Walk the Python frames of CPython processes and show them in place
    /// of the interpreter's eval loop (docs/profiling.md).
    pub python: bool,
    /// Off-CPU profiles (`sonde profile --off-cpu`): a `sched_switch`
    /// program takes the stack of user threads leaving the CPU and weighs
    /// it by the time until they come back (docs/profiling.md). Off by
    /// default: every context switch of the host pays for the program
    /// (~100 ns here), which a switch-heavy workload feels.
    pub off_cpu: bool,
    /// Shorter blocks are not counted (their stack was still taken).
    pub off_cpu_min_block: Dur<0, 60>,
    /// Most stacks taken per CPU per second as threads leave it; switches
    /// beyond it are counted (`capped`) and not profiled.
    pub off_cpu_max_rate: Bounded<16, 1_000_000>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            frequency_hz: Bounded(19),
            window: Dur(Duration::from_secs(60)),
            drain_interval: Dur(Duration::from_secs(2)),
            max_cached_files: Bounded(32),
            max_cached_symbols: Bounded(50_000),
            max_processes: Bounded(4096),
            dwarf_budget_mib: Bounded(16),
            unwind: true,
            unwind_table_budget_mib: Bounded(64),
            max_keys: Bounded(u64::from(sonde_common::profile::PROFILE_MAX_KEYS)),
            max_stacks: Bounded(u64::from(sonde_common::profile::PROFILE_MAX_STACKS)),
            python: true,
            off_cpu: false,
            off_cpu_min_block: Dur(Duration::from_millis(1)),
            off_cpu_max_rate: Bounded(1000),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Json => "json",
            Self::Text => "text",
        })
    }
}

impl Config {
    /// Loads `path` (or the built-in defaults when `None`) and applies the
    /// `SONDE_*__*` overrides found in `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "<built-in defaults>".to_owned()),
        };
        Self::from_str_with_env(&text, &name, env)
    }

    pub fn from_str_with_env(
        text: &str,
        name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse_and_override(text, name, env)?;
        // Rules are checked after parsing, so their errors name the rule.
        config.alerts.compile().map_err(|error| ConfigError::Rule {
            path: name.to_owned(),
            error,
        })?;
        Ok(config)
    }

    fn parse_and_override(
        text: &str,
        name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        // Parse the file alone first so its errors carry its line numbers.
        let config: Config = toml::from_str(text).map_err(parse_err)?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        if overrides.is_empty() {
            return Ok(config);
        }
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        for (var, value) in overrides {
            apply_override(&mut table, &var, &value)?;
            // Re-check after each one so an error names the variable at fault.
            Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Env {
                    var: var.clone(),
                    message: e.to_string().trim_end().to_owned(),
                }
            })?;
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
            var: "SONDE_*".into(),
            message: e.to_string(),
        })
    }

    /// The effective configuration as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// Sets the key named by `var` (`SONDE_COLLECTORS__PROCESS__ENABLED`) in
/// `table`. The value is read as a TOML literal when it is one (`true`, `42`,
/// `["a"]`), else as a string, so `SONDE_API__LISTEN=0.0.0.0:1` just works.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "empty key segment".into(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = path.split_last().expect("split() yields at least one item");
    let mut cur = table;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_owned(),
            message: format!("`{seg}` is not a table"),
        })?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with_env(text, "test.toml", Vec::new())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default().to_toml();
        assert_eq!(parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[api]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_line_and_bounds() {
        let err = parse("[collectors.process]\nmax_processes = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("between 64 and"), "{err}");
    }

    #[test]
    fn http_max_connections_is_bounded_and_defaults_to_the_old_map_size() {
        assert_eq!(
            Config::default().collectors.http.max_connections.get(),
            16_384
        );
        let c = parse("[collectors.http]\nmax_connections = 64\n").unwrap();
        assert_eq!(c.collectors.http.max_connections.get(), 64);
        let err = parse("[collectors.http]\nmax_connections = 63\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("between 64 and"),
            "{err}"
        );
    }

    #[test]
    fn profile_map_sizes_are_bounded_and_default_to_the_compiled_ones() {
        let d = Config::default().collectors.profile;
        assert_eq!((d.max_keys.get(), d.max_stacks.get()), (8_192, 8_192));
        let c = parse("[collectors.profile]\nmax_keys = 16\nmax_stacks = 16\n").unwrap();
        assert_eq!(c.collectors.profile.max_keys.get(), 16);
        assert_eq!(c.collectors.profile.max_stacks.get(), 16);
        for (text, line) in [
            ("[collectors.profile]\nmax_keys = 15\n", "line 2"),
            ("[collectors.profile]\n\nmax_stacks = 262145\n", "line 3"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(line) && err.contains("between"), "{err}");
        }
    }

    #[test]
    fn http_hook_choices_parse_and_bad_ones_name_the_line() {
        for (text, want) in [
            ("auto", HttpHook::Auto),
            ("syscall", HttpHook::Syscall),
            ("tracepoint", HttpHook::Tracepoint),
        ] {
            let c = parse(&format!("[collectors.http]\nhook = \"{text}\"\n")).unwrap();
            assert_eq!(c.collectors.http.hook, want);
        }
        assert_eq!(Config::default().collectors.http.hook, HttpHook::Auto);
        // Benchmark modes live in xtask/bench-probes, not in the agent.
        for bad in ["kprobe", "floor", "floor_read"] {
            let err = parse(&format!("[collectors.http]\nhook = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn memory_hook_choices_parse() {
        assert_eq!(Config::default().collectors.memory.hook, MemoryHook::Auto);
        let c = parse("[collectors.memory]\nhook = \"syscall\"\n").unwrap();
        assert_eq!(c.collectors.memory.hook, MemoryHook::Syscall);
        for bad in ["kprobe", "floor"] {
            let err = parse(&format!("[collectors.memory]\nhook = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn profile_frequency_is_validated() {
        let c = parse("[collectors.profile]\nfrequency_hz = 99\n").unwrap();
        assert_eq!(c.collectors.profile.frequency_hz.get(), 99);
        let err = parse("[collectors.profile]\nfrequency_hz = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("between 1 and 1000"),
            "{err}"
        );
        assert_eq!(Config::default().collectors.profile.frequency_hz.get(), 19);
    }

    #[test]
    fn unknown_syscall_names_the_key_and_line() {
        let c = parse("[collectors.syscalls]\nsyscalls = [\"getppid\", \"sys_300\"]\n").unwrap();
        let nrs: Vec<u32> = c
            .collectors
            .syscalls
            .syscalls
            .iter()
            .map(|s| s.nr())
            .collect();
        assert_eq!(nrs, [110, 300]);
        // toml points at the array (the key's line) for a bad element.
        let err = parse("[collectors.syscalls]\nenabled = true\nsyscalls = [\n  \"read\",\n  \"getppidd\",\n]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3")
                && err.contains("collectors.syscalls.syscalls")
                && err.contains("getppidd"),
            "{err}"
        );
        // The same check through an environment override.
        let env = vec![(
            "SONDE_COLLECTORS__SYSCALLS__SYSCALLS".to_owned(),
            "[\"nope\"]".to_owned(),
        )];
        let err = Config::from_str_with_env("", "t", env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SONDE_COLLECTORS__SYSCALLS__SYSCALLS") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn bad_route_pattern_names_the_key_and_line() {
        let c = parse("[collectors.http]\nroutes = [\"/items/{id}\"]\n").unwrap();
        assert_eq!(c.collectors.http.routes[0].as_str(), "/items/{id}");
        let err = parse("[collectors.http]\nroutes = [\"/ok\", \"items/{id}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2")
                && err.contains("collectors.http.routes")
                && err.contains("items/{id}"),
            "{err}"
        );
    }

    #[test]
    fn bad_log_filter_names_the_key_and_line() {
        let c = parse("[agent]\nlog_level = \"sonde=debug,info\"\n").unwrap();
        assert_eq!(c.agent.log_level.as_str(), "sonde=debug,info");
        let err = parse("[agent]\nlog_level = \"sonde=loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("agent.log_level"),
            "{err}"
        );
    }

    #[test]
    fn validated_values_round_trip_through_print_config() {
        let text = "[agent]\nlog_level = \"debug\"\n[collectors.http]\nroutes = [\"/a/{b}\"]\n\
                    [collectors.syscalls]\nsyscalls = [\"openat\"]\n";
        let c = parse(text).unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn bad_address_is_rejected() {
        let err = parse("[api]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn config_durations_are_bounded() {
        let err = parse("[collectors.process]\nexited_grace = \"2h\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 1s and 3600s"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_are_typed() {
        let env = vec![
            ("SONDE_API__LISTEN".to_owned(), "0.0.0.0:9999".to_owned()),
            (
                "SONDE_COLLECTORS__PROCESS__ENABLED".to_owned(),
                "false".to_owned(),
            ),
            ("SONDE_CONFIG".to_owned(), "/ignored".to_owned()),
        ];
        let c = Config::from_str_with_env("[api]\nlisten = \"127.0.0.1:1\"\n", "t", env).unwrap();
        assert_eq!(c.api.listen, "0.0.0.0:9999".parse().unwrap());
        assert!(!c.collectors.process.enabled);
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let env = vec![("SONDE_API__LISTNE".to_owned(), "x".to_owned())];
        let err = Config::from_str_with_env("", "t", env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SONDE_API__LISTNE"), "{err}");
        assert!(err.contains("listne"), "{err}");
    }
}
