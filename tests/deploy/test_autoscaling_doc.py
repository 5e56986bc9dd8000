"""The autoscaling example reads metrics /metrics really exposes, and drains within its grace."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.metrics import build_registry, render_metrics
from service.store.sqlite_store import SqliteJobStore
from worker.config import WorkerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "keda-worker-scaledobject.yaml"


def test_the_keda_example_queries_exposed_metrics_and_fits_the_drain(tmp_path):
    scaled, deployment = yaml.safe_load_all(DOC.read_text())
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    exposed = render_metrics(build_registry(SqliteJobStore(tmp_path / "jobs.sqlite3"))).decode()
    for name in {n for q in queries for n in re.findall(r"visionjobs_\w+", q)}:
        assert re.search(rf'^{name}{{kind="colorize"}} ', exposed, re.M), name
    pod = deployment["spec"]["template"]["spec"]
    drain = float({e["name"]: e["value"] for e in pod["containers"][0]["env"]}["VISIONJOBS_DRAIN_TIMEOUT_S"])
    assert drain == WorkerSettings.model_fields["drain_timeout_s"].default
    assert pod["terminationGracePeriodSeconds"] >= drain + 10  # the hand-back happens before the SIGKILL
