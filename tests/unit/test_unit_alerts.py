"""deploy/prometheus-alerts.example.yaml: every metric its rules name is one the
workers export, under the name Prometheus shows it by."""

import re
from pathlib import Path

import prometheus_client
import yaml

from lega import health

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.example.yaml"


def exported_names():
    names = set()
    for metric in (health.HEARTBEAT, health.DEAD_LETTERS, health.DISPATCHED, health.MESSAGES):
        for family in metric.collect():
            names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_an_alert_names_is_exported():
    health.HEARTBEAT.set(0)
    health.DEAD_LETTERS.labels("from_cega")
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {"CentralEGASilent", "LegaMessagesParked"}
    exported = exported_names()
    for rule in rules:
        named = set(re.findall(r"\blega_[a-z_]+", rule["expr"]))
        assert named and named <= exported, (rule["alert"], named - exported)


def test_the_heartbeat_metric_is_a_unix_time():
    health.HEARTBEAT.set(1_700_000_000.5)
    text = prometheus_client.generate_latest().decode()
    assert "lega_cega_heartbeat_timestamp_seconds 1.7000000005e+09" in text
