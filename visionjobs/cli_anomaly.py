"""`visionjobs anomaly-models list | show | set-thresholds | delete`, and how a finished job's
result tells the next step: the ids it made (anomaly, subject and tuned models) and the score
table of an anomaly-scoring job (registered by visionjobs/cli_jobs.py)."""
from __future__ import annotations

from typing import Any, Optional

import click

from visionjobs.cli_jobs import _Api, _echo_json, connection_options


def _result(job) -> dict:
    result = job.result
    return result.model_dump(mode="json") if hasattr(result, "model_dump") else (result or {})


def next_step_lines(job) -> list[str]:
    """The ids a succeeded job made, with the command that uses each."""
    if job.status.value != "succeeded":
        return []
    result = _result(job)
    if job.kind == "anomaly.fit" and result.get("model_id"):
        mid = result["model_id"]
        return [f"  anomaly model: {mid}", f"  next: visionjobs submit anomaly-score {mid} IMAGES..."]
    if job.kind == "subject.tune" and result.get("subject_model"):
        sid = result["subject_model"]
        return [f"  subject model: {sid}", f"  next: visionjobs submit subject --subject-model {sid} --prompt ..."]
    if job.kind == "video.edit" and result.get("tuned_model_id"):
        tid = result["tuned_model_id"]
        return [f"  tuned model: {tid}", f"  next: visionjobs submit video-edit --tuned-model {tid} --edit ..."]
    return []


def score_table(job) -> list[str]:
    """An anomaly-scoring job's items as a table: input file name, score, label."""
    items = _result(job).get("items") if job.kind == "anomaly.score" else None
    if not items:
        return []
    names = [i.get("filename") or i.get("image") or "?" for i in items]
    width = max(len("input"), *map(len, names))
    lines = [f"  {'input':<{width}}  {'score':>8}  {'normalized':>10}  label"]
    for name, item in zip(names, items):
        label = "anomalous" if item.get("label") else "normal"
        lines.append(f"  {name:<{width}}  {item.get('score', 0):>8.4f}  {item.get('normalized_score', 0):>10.4f}  {label}")
    return lines


@click.group("anomaly-models")
def anomaly_models() -> None:
    """List, show, re-threshold and delete anomaly models (anm_...)."""


def _threshold(m, name: str) -> str:
    value = (m.thresholds or {}).get(name)
    method = (m.thresholds or {}).get(f"{name}_method")
    shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
    return shown + (f" ({method})" if method else "")


def _line(m) -> str:
    return (f"{m.id}  {m.name}  {m.model}  {m.backbone}  image threshold {_threshold(m, 'image')}  "
            f"{m.created_at.astimezone().strftime('%Y-%m-%d %H:%M')}")


@anomaly_models.command("list")
@connection_options
def anomaly_models_list(url, api_key, as_json) -> None:
    """This key's anomaly models, newest first."""
    with _Api(url, api_key) as client:
        items = client.list_anomaly_models().items
    if as_json:
        _echo_json({"items": [m.model_dump(mode="json") for m in items]})
    elif not items:
        click.echo("no anomaly models", err=True)
    else:
        for m in items:
            click.echo(_line(m))


def _show(m) -> None:
    click.echo(_line(m))
    click.echo(f"  image size {m.image_size}  counts " + ", ".join(f"{k} {v}" for k, v in (m.counts or {}).items()))
    click.echo(f"  thresholds: image {_threshold(m, 'image')}, pixel {_threshold(m, 'pixel')}")
    if m.test_metrics:
        click.echo("  test: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in m.test_metrics.items() if v is not None))
    click.echo(f"  fitted by job {m.job_id}")


@anomaly_models.command("show")
@click.argument("model_id")
@connection_options
def anomaly_models_show(model_id, url, api_key, as_json) -> None:
    """One anomaly model: thresholds, counts, test metrics."""
    with _Api(url, api_key) as client:
        m = client.get_anomaly_model(model_id)
    if as_json:
        _echo_json(m.model_dump(mode="json"))
    else:
        _show(m)


@anomaly_models.command("set-thresholds")
@click.argument("model_id")
@click.option("--image", "image_threshold", type=float, default=None, help="Raw image-score threshold.")
@click.option("--pixel", "pixel_threshold", type=float, default=None, help="Raw pixel-score threshold.")
@connection_options
def anomaly_models_set_thresholds(model_id, image_threshold: Optional[float], pixel_threshold: Optional[float],
                                  url, api_key, as_json) -> None:
    """New thresholds without refitting (raw units; scores are normalised so each maps to 0.5)."""
    if image_threshold is None and pixel_threshold is None:
        raise click.UsageError("give --image and/or --pixel")
    with _Api(url, api_key) as client:
        m = client.update_anomaly_model(model_id, image_threshold=image_threshold, pixel_threshold=pixel_threshold)
    if as_json:
        _echo_json(m.model_dump(mode="json"))
    else:
        _show(m)


@anomaly_models.command("delete")
@click.argument("model_id")
@connection_options
def anomaly_models_delete(model_id, url, api_key, as_json) -> None:
    """Delete an anomaly model and its files."""
    with _Api(url, api_key) as client:
        client.delete_anomaly_model(model_id)
    if as_json:
        _echo_json({"deleted": model_id})
    else:
        click.echo(f"deleted {model_id}")


def result_lines(job: Any) -> list[str]:
    return next_step_lines(job) + score_table(job)
