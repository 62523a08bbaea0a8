//! Every metric family sonde can export, so alert rules that name a metric
//! sonde never produces are rejected at load time instead of silently never
//! firing. Histograms are listed by their base name; `_bucket`, `_sum` and
//! `_count` series are accepted for them.
//!
//! A family listed here may still be absent at run time (its collector is
//! disabled or could not attach): rules over it then simply match nothing.

/// Family names (histograms by base name).
pub const KNOWN: &[&str] = &[
    // Foundation (telemetry.rs, process collector, process table).
    "sonde_build_info",
    "sonde_config_reloads_total",
    "sonde_config_restart_pending_keys",
    "sonde_collector_up",
    "sonde_events_lost_total",
    "sonde_ebpf_program_verified_insns",
    "sonde_processes_tracked",
    "sonde_process_execs_total",
    "sonde_process_exits_total",
    "sonde_process_table_evictions_total",
    // The agent's own process (prometheus process collector).
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
    // HTTP collector.
    "http_server_request_duration_seconds",
    "http_server_active_requests",
    "http_client_request_duration_seconds",
    "sonde_http_server_cpu_seconds_total",
    // Syscalls collector.
    "sonde_syscalls_total",
    "sonde_syscall_errors_total",
    "sonde_syscall_duration_seconds",
    // CPU profiler.
    "sonde_profile_samples_total",
    // Memory (collectors/memory/growth.rs).
    "sonde_memory_mapped_bytes",
    "sonde_memory_resident_bytes",
    "sonde_memory_map_bytes_total",
    "sonde_memory_page_faults_total",
    "sonde_memory_errors_total",
    "sonde_memory_drains_total",
    "sonde_memory_python_walks_total",
    // Alerts (this engine).
    "sonde_alerts",
    "sonde_alert_evaluation_duration_seconds",
    "sonde_alert_evaluation_failures_total",
    "sonde_alert_notifications_total",
    "sonde_alert_notifications_failed_total",
    "sonde_alert_notifications_dropped_total",
    "sonde_alert_queue_length",
    "sonde_alert_series_dropped_total",
    // Self-metrics and identity (kept in sync by tests/tests/dashboards.rs).
    "http_server_request_body_size_bytes",
    "http_server_response_body_size_bytes",
    "sonde_container_info",
    "sonde_kubernetes_pod_refreshes_total",
    "sonde_http_aborted_requests_total",
    "sonde_http_kernel_events_total",
    "sonde_http_route_overflow_total",
    "sonde_http_unparsed_requests_total",
    "sonde_profile_cache_evictions_total",
    "sonde_profile_cpus_attached",
    "sonde_profile_drains_total",
    "sonde_profile_errors_total",
    "sonde_profile_files_cached",
    "sonde_profile_files_parsed",
    "sonde_profile_dwarf_bytes",
    "sonde_profile_dwarf_refused_total",
    "sonde_profile_kernel_stack_absent_total",
    "sonde_profile_offcpu_events_total",
    "sonde_profile_processes_mapped",
    "sonde_profile_python_errors_total",
    "sonde_profile_python_processes",
    "sonde_profile_python_walks_total",
    "sonde_profile_symbol_cache_entries",
    "sonde_profile_symbolize_total",
    // DWARF unwinder (profile collector).
    "sonde_unwind_errors_total",
    "sonde_unwind_processes",
    "sonde_unwind_stacks_total",
    "sonde_unwind_table_budget_bytes",
    "sonde_unwind_table_build_seconds_total",
    "sonde_unwind_table_bytes",
    "sonde_unwind_table_evictions_total",
    "sonde_unwind_table_failures_total",
    "sonde_unwind_tables_built_total",
    "sonde_unwind_tables_loaded",
    "sonde_syscalls_labels_folded_total",
    "sonde_syscalls_map_full_total",
    "sonde_syscalls_processes_released_total",
    "sonde_syscalls_tracked_pairs",
    "sonde_syscalls_tracked_processes",
];

/// The histogram families in `KNOWN`: only their `_bucket`, `_sum` and
/// `_count` series exist.
pub const HISTOGRAMS: &[&str] = &[
    "http_server_request_duration_seconds",
    "http_client_request_duration_seconds",
    "sonde_syscall_duration_seconds",
    "sonde_alert_evaluation_duration_seconds",
    "http_server_request_body_size_bytes",
    "http_server_response_body_size_bytes",
];

/// Whether `series` (a family name, or a histogram's `_bucket`/`_sum`/`_count`
/// series) is something sonde can export.
pub fn is_known(series: &str) -> bool {
    if KNOWN.contains(&series) && !HISTOGRAMS.contains(&series) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        series
            .strip_suffix(s)
            .is_some_and(|b| HISTOGRAMS.contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_series_resolve_to_their_family() {
        assert!(is_known("http_server_request_duration_seconds_bucket"));
        assert!(is_known("sonde_collector_up"));
        // A histogram has no series under its bare name.
        assert!(!is_known("http_server_request_duration_seconds"));
        assert!(!is_known("sonde_collector_up_count"));
        for h in HISTOGRAMS {
            assert!(KNOWN.contains(h), "{h}");
        }
        assert!(!is_known("sonde_nope_total"));
    }
}
