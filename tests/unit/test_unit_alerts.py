"""deploy/prometheus-alerts.example.yaml: every metric its rules name is one that is
exported, under the name Prometheus shows it by: the workers' (lega.health) for most,
ega-admin fixity's --metrics-file (lega.fixity.write_metrics, for node_exporter's
textfile collector) for lega_fixity_*, and kube-state-metrics' for the CronJob."""

import re
from pathlib import Path

import prometheus_client
import yaml

from lega import fixity, health

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus-alerts.example.yaml"
FIXITY_PREFIX = "lega_fixity_"
# kube-state-metrics' CronJob metrics the examples may use (its docs/metrics/workload/
# cronjob-metrics.md)
KUBE_STATE_METRICS = {"kube_cronjob_status_last_successful_time",
                      "kube_cronjob_status_last_schedule_time", "kube_cronjob_status_active"}


def exported_names():
    names = set()
    for metric in (health.HEARTBEAT, health.DEAD_LETTERS, health.DISPATCHED, health.MESSAGES):
        for family in metric.collect():
            names.update(sample.name for sample in family.samples)
    return names


def fixity_names(tmp_path):
    """The names in the file ``ega-admin fixity --metrics-file`` writes."""
    path = tmp_path / "lega_fixity.prom"
    fixity.write_metrics(str(path), {"started_at": 1_700_000_000.0, "seconds": 1.0,
                                     "files_checked": 1, "bytes_checked": 1, "good": 1,
                                     "bad": 0, "repaired": 0})
    return {line.split()[0].split("{")[0] for line in path.read_text().splitlines()
            if line and not line.startswith("#")}


def rules():
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_every_metric_an_alert_names_is_exported(tmp_path):
    health.HEARTBEAT.set(0)
    health.DEAD_LETTERS.labels("from_cega")
    assert {rule["alert"] for rule in rules()} >= {
        "CentralEGASilent", "LegaMessagesParked", "LegaFixityBadCopies", "LegaFixityNotRun",
        "LegaFixityNoSuccessfulRun"}
    exported, from_fixity = exported_names(), fixity_names(tmp_path)
    assert {"lega_fixity_files_bad", "lega_fixity_last_run_timestamp_seconds"} <= from_fixity
    # the fixity figures come only from the textfile, never from a worker's /metrics
    assert not {n for n in exported if n.startswith(FIXITY_PREFIX)}
    for rule in rules():
        named = set(re.findall(r"\blega_[a-z_]+", rule["expr"]))
        kube = set(re.findall(r"\bkube_[a-z_]+", rule["expr"]))
        assert named or kube, f"{rule['alert']} names no metric"
        fixity_ones = {n for n in named if n.startswith(FIXITY_PREFIX)}
        assert fixity_ones <= from_fixity, (rule["alert"], fixity_ones - from_fixity)
        assert named - fixity_ones <= exported, (rule["alert"], named - fixity_ones - exported)
        assert kube <= KUBE_STATE_METRICS, (rule["alert"], kube - KUBE_STATE_METRICS)


def test_fixity_alerts_watch_bad_copies_and_runs_that_stopped():
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}
    assert re.search(r"lega_fixity_files_bad\)?\s*>\s*0\b", by_name["LegaFixityBadCopies"])
    assert re.search(r"time\(\)\s*-\s*max\(lega_fixity_last_run_timestamp_seconds\)\s*>",
                     by_name["LegaFixityNotRun"])


def test_the_kubernetes_fixity_alert_names_the_cronjob():
    (cronjob,) = [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "fixity.yaml").read_text())
                  if doc and doc.get("kind") == "CronJob"]
    expr = {rule["alert"]: rule["expr"] for rule in rules()}["LegaFixityNoSuccessfulRun"]
    assert f'cronjob="{cronjob["metadata"]["name"]}"' in expr


def test_the_heartbeat_metric_is_a_unix_time():
    health.HEARTBEAT.set(1_700_000_000.5)
    text = prometheus_client.generate_latest().decode()
    assert "lega_cega_heartbeat_timestamp_seconds 1.7000000005e+09" in text
