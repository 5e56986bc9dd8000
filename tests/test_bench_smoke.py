"""The benchmark harness's plumbing (bench/run.py) on its trivial `selftest` benchmark: one
table printed, one JSON file with the machine, versions and settings. Properties only: no
figure here is compared with anything (benchmarks never assert times in tests/)."""
from __future__ import annotations

import json

import pytest

from bench import run as harness
from bench.common import format_table, percentile, row


def test_quick_only_selftest_writes_json_and_prints_one_table(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert harness.main(["--quick", "--only", "selftest", "--no-gpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    report = json.loads(out.read_text())
    m = report["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["usable_cores"] >= 1
    assert m["ram_gib"] is None or m["ram_gib"] > 0
    assert isinstance(m["gpu"], list)
    v = report["versions"]
    for name in ("python", "torch", "diffusers", "visionjobs"):
        assert name in v
    assert v["python"].count(".") == 2 and v["visionjobs"]
    s = report["settings"]
    assert s["quick"] is True and s["only"] == ["selftest"] and s["gpu"] is False and s["gpu_rows"] is False

    bench = report["benchmarks"]["selftest"]
    assert bench["status"] == "ok" and bench["settings"]["quick"] is True
    assert bench["rows"] and all(set(r) >= {"case", "metric", "value", "unit"} for r in bench["rows"])
    assert list(report["benchmarks"]) == ["selftest"]

    # the one table: header, the benchmark's rows, the same text in the JSON and the .txt file
    table = report["table"]
    assert table in printed
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["benchmark", "case", "figure", "value"]
    assert lines[2].startswith("selftest")
    for r in bench["rows"]:
        assert r["metric"] in table
    assert table in out.with_suffix(".txt").read_text()


def test_failing_benchmark_is_reported_and_the_others_still_run(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = harness.main(["--quick", "--no-gpu", "--out", str(out), "--log-dir", str(tmp_path / "logs")],
                        benchmarks={"broken": "bench.run:no_such_benchmark", "selftest": "bench.run:selftest"})
    assert code == 1
    report = json.loads(out.read_text())
    assert report["benchmarks"]["broken"]["status"] == "error"
    assert "exit status" in report["benchmarks"]["broken"]["error"]
    assert any("no_such_benchmark" in line for line in report["benchmarks"]["broken"]["log_tail"])
    assert report["benchmarks"]["selftest"]["status"] == "ok"
    assert (tmp_path / "logs" / "broken.log").exists() and report["benchmarks"]["broken"]["log"].endswith("broken.log")
    assert "broken" in report["table"] and "selftest" in report["table"]


def test_unknown_name_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        harness.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_table_and_percentile_helpers():
    text = format_table({"a": [row("c1", "m1", 1.0, "s"), row("c1", "m2", None)], "b": [row("c2", "m3", 12345.6)]})
    lines = text.splitlines()
    assert len(lines) == 2 + 2 + 1 + 1  # header, rule, a's rows, blank line, b's row
    assert "1.000" in lines[2] and lines[3].split()[0] == "m2" and "12,346" in lines[5]
    assert percentile([3, 1, 2], 50) == 2 and percentile([], 50) is None
    assert percentile([0, 10], 95) == pytest.approx(9.5)


def test_store_capacity_drives_real_jobs_through_a_private_redis():
    """Tiny counts: the figures are derived from what really ran (jobs finished, CPU, commands)."""
    from bench.common import BenchOptions
    from bench.store_capacity import STEPS_PER_S, collect

    report = collect(BenchOptions(quick=True, gpu=False), workers=2, producers=1, seconds=0.5, durations=(0.5,))
    [r] = report["details"]["results"]
    assert r["jobs"] > 0 and r["redis_cpu_s"] > 0
    # at least the calls a job makes from outside (submit 6, claim 2, progress and checks per step, finish 2)
    assert r["commands_per_job"] >= 10 + 0.5 * STEPS_PER_S
    assert r["gpus_per_redis"] == pytest.approx(0.5 / (r["redis_cpu_ms_per_job"] / 1000))
    assert "evalsha" in r["redis_time_by_command"]  # the job-store scripts ran
    assert {x["metric"] for x in report["rows"]} >= {"jobs/s sustained here", "Redis CPU per job",
                                                     "GPUs one Redis can feed"}
