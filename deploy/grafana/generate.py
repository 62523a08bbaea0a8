#!/usr/bin/env python3
"""Generates sonde's Grafana dashboards (deploy/grafana/*.json).

Run from anywhere: python3 deploy/grafana/generate.py
The JSON files are committed; tests/tests/dashboards.rs checks that they are
what this script writes and that every metric they query is exported by the
agent. Target: Grafana 11/12 (schemaVersion 39), Prometheus datasource
chosen by the `datasource` variable.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SVC = 'service_name=~"$service"'


def var_datasource():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "options": [],
    }


def var_query(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "sort": 1,
        "hide": 0,
        "options": [],
    }


class Dash:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title):
        self._newline()
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "id": len(self.panels) + 1,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def panel(self, kind, title, description, targets, w=12, h=8, unit=None, **extra):
        if self.x + w > 24:
            self._newline()
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                 "legendFormat": legend, "range": True,
                 **({"format": "heatmap"} if kind == "heatmap" else {}),
                 **({"instant": True, "range": False, "format": "table"} if kind == "table" else {})}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
            "options": {},
        }
        p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["sonde", "ebpf"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "browser",
            "templating": {"list": [var_datasource()] + self.variables},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["sonde"], "asDropdown": True, "title": "sonde"}],
            "panels": self.panels,
        }


def service_var(metric):
    return var_query("service", "Service", f"label_values({metric}, service_name)")


def red():
    d = Dash("sonde-red", "sonde / Service RED",
             "Request rate, errors and duration of HTTP servers seen by sonde (no instrumentation).",
             [service_var("http_server_request_duration_seconds_count")])
    m = "http_server_request_duration_seconds"
    sel = SVC
    d.row("Overview")
    d.panel("stat", "Request rate", "Requests per second, all routes.",
            [(f"sum(rate({m}_count{{{sel}}}[{RATE}]))", "req/s")], w=6, h=5, unit="reqps")
    d.panel("stat", "Error %", "Share of responses with a 5xx status.",
            [(f'100 * sum(rate({m}_count{{{sel}, http_response_status_code=~"5.."}}[{RATE}])) '
              f"/ sum(rate({m}_count{{{sel}}}[{RATE}]))", "errors")], w=6, h=5, unit="percent")
    d.panel("stat", "p95 latency", "95th percentile of server request duration.",
            [(f"histogram_quantile(0.95, sum by (le) (rate({m}_bucket{{{sel}}}[{RATE}])))", "p95")],
            w=6, h=5, unit="s")
    d.panel("stat", "In flight", "Requests being served now.",
            [(f"sum(http_server_active_requests{{{sel}}})", "in flight")], w=6, h=5)
    d.row("Rate and errors")
    d.panel("timeseries", "Request rate by route", "Requests per second per route template.",
            [(f"sum by (service_name, http_route) (rate({m}_count{{{sel}}}[{RATE}]))",
              "{{service_name}} {{http_route}}")], unit="reqps")
    d.panel("timeseries", "Error % by service", "5xx responses as a share of all responses.",
            [(f'100 * sum by (service_name) (rate({m}_count{{{sel}, http_response_status_code=~"5.."}}[{RATE}])) '
              f"/ sum by (service_name) (rate({m}_count{{{sel}}}[{RATE}]))", "{{service_name}}")],
            unit="percent")
    d.panel("timeseries", "Responses by status code", "Requests per second by HTTP status code.",
            [(f"sum by (http_response_status_code) (rate({m}_count{{{sel}}}[{RATE}]))",
              "{{http_response_status_code}}")], unit="reqps")
    d.panel("timeseries", "In-flight requests", "http_server_active_requests per service.",
            [(f"sum by (service_name) (http_server_active_requests{{{sel}}})", "{{service_name}}")])
    d.row("Duration")
    d.panel("timeseries", "Latency p50 / p95 / p99", "Server request duration percentiles.",
            [(f"histogram_quantile({q}, sum by (le) (rate({m}_bucket{{{sel}}}[{RATE}])))", f"p{int(q * 100)}")
             for q in (0.5, 0.95, 0.99)], unit="s")
    d.panel("table", "Top routes by p95 latency", "The ten slowest routes over the dashboard range.",
            [(f"topk(10, histogram_quantile(0.95, sum by (le, service_name, http_route) "
              f"(rate({m}_bucket{{{sel}}}[$__range]))))", "")], unit="s")
    d.panel("timeseries", "Outgoing HTTP client p95", "Duration of requests the service makes.",
            [("histogram_quantile(0.95, sum by (le, service_name) "
              f"(rate(http_client_request_duration_seconds_bucket{{{sel}}}[{RATE}])))", "{{service_name}}")],
            unit="s")
    d.panel("timeseries", "Body sizes", "Mean request and response body size.",
            [(f"sum(rate(http_server_request_body_size_bytes_sum{{{sel}}}[{RATE}])) / "
              f"sum(rate(http_server_request_body_size_bytes_count{{{sel}}}[{RATE}]))", "request"),
             (f"sum(rate(http_server_response_body_size_bytes_sum{{{sel}}}[{RATE}])) / "
              f"sum(rate(http_server_response_body_size_bytes_count{{{sel}}}[{RATE}]))", "response")],
            unit="bytes")
    cpu = "sonde_http_server_cpu_seconds_total"
    d.row("CPU")
    d.panel("timeseries", "CPU by route",
            "CPU time spent serving each route, in cores: profiler samples of the threads serving a "
            "request of that route (thread-per-request servers), or of its handler (asyncio); see "
            "docs/profiling.md. Needs the profile and http collectors.",
            [(f"sum by (service_name, http_request_method, http_route) (rate({cpu}{{{sel}}}[{RATE}]))",
              "{{service_name}} {{http_request_method}} {{http_route}}")])
    d.panel("timeseries", "CPU per request by route", "CPU seconds per request of each route.",
            [(f"sum by (service_name, http_route) (rate({cpu}{{{sel}}}[{RATE}])) / "
              f"sum by (service_name, http_route) (rate({m}_count{{{sel}}}[{RATE}]))",
              "{{service_name}} {{http_route}}")], unit="s")
    return d


def syscalls():
    d = Dash("sonde-syscalls", "sonde / Syscalls", "System calls per service, counted in the kernel.",
             [service_var("sonde_syscalls_total"),
              var_query("syscall", "Syscall", 'label_values(sonde_syscalls_total{service_name=~"$service"}, syscall)')])
    sel = f'{SVC}, syscall=~"$syscall"'
    d.panel("timeseries", "Syscall rate", "Calls per second by syscall.",
            [(f"topk(15, sum by (syscall) (rate(sonde_syscalls_total{{{sel}}}[{RATE}])))", "{{syscall}}")],
            unit="ops")
    d.panel("timeseries", "Syscall errors", "Failed calls per second by syscall and errno.",
            [(f"topk(15, sum by (syscall, errno) (rate(sonde_syscall_errors_total{{{sel}}}[{RATE}])))",
              "{{syscall}} {{errno}}")], unit="ops")
    d.panel("heatmap", "Latency heatmap", "Distribution of syscall durations.",
            [(f"sum by (le) (rate(sonde_syscall_duration_seconds_bucket{{{sel}}}[{RATE}]))", "{{le}}")],
            w=24, h=10, unit="s",
            options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                     "color": {"mode": "scheme", "scheme": "Oranges"}})
    d.panel("timeseries", "p99 latency by syscall", "99th percentile duration per syscall.",
            [(f"histogram_quantile(0.99, sum by (le, syscall) (rate(sonde_syscall_duration_seconds_bucket{{{sel}}}[{RATE}])))",
              "{{syscall}}")], w=24, unit="s")
    return d


def memory():
    d = Dash("sonde-memory", "sonde / Memory growth", "Mapped memory per service and how fast it grows.",
             [service_var("sonde_memory_mapped_bytes")])
    d.panel("timeseries", "Mapped memory", "Bytes mapped (mmap + brk) per service.",
            [(f"sum by (service_name) (sonde_memory_mapped_bytes{{{SVC}}})", "{{service_name}}")], unit="bytes")
    d.panel("timeseries", "Growth rate", "Derivative over 15 minutes: a steady positive slope is a leak suspect.",
            [(f"sum by (service_name) (deriv(sonde_memory_mapped_bytes{{{SVC}}}[15m]))", "{{service_name}}")],
            unit="Bps")
    d.panel("table", "Top growers (1h)", "Services whose mapped memory grew the most in the last hour.",
            [(f"topk(10, sum by (service_name) (delta(sonde_memory_mapped_bytes{{{SVC}}}[1h])))", "")],
            w=24, unit="bytes")
    return d


def agent():
    job = var_query("job", "Job", "label_values(sonde_build_info, job)")
    d = Dash("sonde-agent", "sonde / Agent health", "Is sonde itself healthy: collectors, losses, cost.",
             [job])
    j = 'job=~"$job"'
    d.panel("stat", "Collectors up", "Collectors attached and running, per collector.",
            [(f"sum by (collector) (sonde_collector_up{{{j}}})", "{{collector}}")], w=24, h=5)
    d.panel("timeseries", "Events lost", "Events the kernel side could not deliver.",
            [(f"sum by (collector) (rate(sonde_events_lost_total{{{j}}}[{RATE}]))", "{{collector}}")], unit="ops")
    d.panel("timeseries", "Agent CPU", "CPU used by each agent (cores).",
            [(f"rate(process_cpu_seconds_total{{{j}}}[{RATE}])", "{{instance}}")], unit="percentunit")
    d.panel("timeseries", "Agent RSS", "Resident memory of each agent.",
            [(f"process_resident_memory_bytes{{{j}}}", "{{instance}}")], unit="bytes")
    d.panel("timeseries", "Processes tracked", "Live processes in the process table; evictions mean it is full.",
            [(f"sonde_processes_tracked{{{j}}}", "{{instance}}"),
             (f"rate(sonde_process_table_evictions_total{{{j}}}[{RATE}])", "evictions {{instance}}")])
    d.panel("timeseries", "Profiler samples", "CPU profile samples taken per service.",
            [(f"topk(10, sum by (service_name) (rate(sonde_profile_samples_total{{{j}}}[{RATE}])))",
              "{{service_name}}")], unit="ops")
    d.panel("timeseries", "Pod list refreshes", "Kubernetes identity refreshes by result.",
            [(f"sum by (result) (rate(sonde_kubernetes_pod_refreshes_total{{{j}}}[{RATE}]))", "{{result}}")],
            unit="ops")
    d.panel("timeseries", "Alerts", "Alerts evaluated by the agent, and failed notifications.",
            [(f'sum by (alertname, state) (sonde_alerts{{{j}}})', "{{alertname}} {{state}}"),
             (f"rate(sonde_alert_notifications_failed_total{{{j}}}[{RATE}])", "notification failures")])
    return d


def main():
    for d in (red(), syscalls(), memory(), agent()):
        path = os.path.join(HERE, f"{d.uid}.json")
        with open(path, "w") as f:
            json.dump(d.json(), f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
