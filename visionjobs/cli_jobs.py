"""`visionjobs submit ...` and `visionjobs jobs ...`: job commands over the visionjobs-client
package (HTTP only: they never import the service, the worker or torch).

The server URL and API key come from --url / --api-key, else from the client's environment
variables (see `visionjobs_client.ClientSettings`: they are client settings, read by the
client package, not server settings).

Exit status: 0 done (a waited-for job succeeded); 1 a waited-for job failed or was canceled;
2 bad usage; 3 the API refused the request or could not be reached.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import click

try:  # the client is a separate distribution (./client); the server commands work without it
    from visionjobs_client.settings import API_KEY_ENV, DEFAULT_URL, URL_ENV
except ImportError:  # pragma: no cover - only without the client installed
    URL_ENV, API_KEY_ENV, DEFAULT_URL = "the client's URL variable", "the client's key variable", "http://127.0.0.1:8000"

from service.kinds import KINDS as _DECLARED  # noqa: E402  (standard library only: no service code runs)

KINDS = tuple(_DECLARED)
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
EXIT_JOB_FAILED, EXIT_API = 1, 3


class ApiFailure(click.ClickException):
    exit_code = EXIT_API


def register(main: click.Group) -> None:
    """Add `submit`, `jobs`, `anomaly-models`, `subject-models` and `tuned-models` to the `visionjobs` command group."""
    from visionjobs.cli_anomaly import anomaly_models
    from visionjobs.cli_subject import subject_models  # also adds `submit subject` and `submit subject-tune`
    from visionjobs.cli_tuned import tuned_models

    main.add_command(anomaly_models)
    main.add_command(submit)
    main.add_command(jobs)
    main.add_command(subject_models)
    main.add_command(tuned_models)


# ------------------------------------------------------------------------------ plumbing


def _client_module():
    try:
        import visionjobs_client
    except ImportError as exc:  # pragma: no cover - only without the client installed
        raise click.ClickException("the job commands need visionjobs-client: pip install -e ./client") from exc
    return visionjobs_client


def connection_options(f: Callable) -> Callable:
    f = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(f)
    f = click.option("--api-key", default=None, metavar="KEY",
                     help=f"API key (Bearer). Default: ${API_KEY_ENV}; none for an anonymous service.")(f)
    f = click.option("--url", default=None, metavar="URL",
                     help=f"API base URL. Default: ${URL_ENV}, else {DEFAULT_URL}.")(f)
    return f


def _open(url: Optional[str], api_key: Optional[str]):
    vc = _client_module()
    settings = vc.ClientSettings.from_env(url, api_key)
    return vc.Client(settings.url, settings.api_key)


class _Api:
    """Client as a context manager that turns API errors into clean CLI errors."""

    def __init__(self, url: Optional[str], api_key: Optional[str]):
        self.url, self.api_key = url, api_key

    def __enter__(self):
        self.client = _open(self.url, self.api_key)
        return self.client

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.client.close()
        vc = _client_module()
        if isinstance(exc, vc.ApiError):
            listed = [f"  {e.get('field')}: {e.get('message')}" + (f" (limit {e['limit']})" if "limit" in e else "")
                      for e in exc.errors]
            # the detail repeats the first listed error: say it once
            head = f"{exc.status} {exc.problem.code or exc.problem.title}" if listed else str(exc)
            total = exc.problem.errors_total or 0
            if listed and total > len(listed):
                listed.append(f"  ... {total - len(listed)} more")
            raise ApiFailure("\n".join([head] + listed)) from exc
        if isinstance(exc, (vc.ApiConnectionError, vc.WaitTimeout)):
            raise ApiFailure(str(exc)) from exc
        if isinstance(exc, (FileNotFoundError, TypeError, ValueError)) and not isinstance(exc, click.ClickException):
            raise click.ClickException(str(exc)) from exc
        return False


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _job_json(job) -> dict:
    return job.model_dump(mode="json")


def _pct(job) -> str:
    return f"{job.progress * 100:.0f}%"


def _when(value: Optional[datetime]) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_job(job, files: Optional[list[Path]] = None) -> None:
    vc = _client_module()
    stage = f"  {job.stage}" if job.stage and job.stage != job.status.value else ""
    click.echo(f"{job.id}  {job.kind}  {job.status.value}  {_pct(job)}{stage}")
    if job.queue_position:
        click.echo(f"  queue position: {job.queue_position}")
    click.echo(f"  created {_when(job.created_at)}  started {_when(job.started_at)}  finished {_when(job.finished_at)}"
               + (f"  attempt {job.attempt}" if job.attempt > 1 else ""))
    if job.model_profile:
        click.echo(f"  model profile: {job.model_profile}")
    if job.error:
        click.echo(f"  error: {job.error.code}: {job.error.message}")
    from visionjobs.cli_anomaly import result_lines

    for line in result_lines(job):  # the ids the next step needs; an anomaly-scoring job's table
        click.echo(line)
    if files:
        for path in files:
            click.echo(f"  wrote {path}")
    elif job.result is not None:
        for url, name in vc.output_files(job):
            click.echo(f"  {name}: {url}")


class _Progress:
    """A live progress bar on stderr (rich, else tqdm), or one line per change, or nothing."""

    def __init__(self, mode: str):
        self.mode, self._bar, self._task, self._last = mode, None, None, None

    def __enter__(self) -> "_Progress":
        if self.mode == "bar":
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

                console = Console(stderr=True, force_terminal=True if not sys.stderr.isatty() else None)
                self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     TaskProgressColumn(), TimeElapsedColumn(), console=console)
                self._bar.start()
                self._task = self._bar.add_task("submitted", total=1.0)
                self.mode = "rich"
            except ImportError:
                try:
                    from tqdm import tqdm

                    self._bar = tqdm(total=100, file=sys.stderr, unit="%", bar_format="{desc} {bar} {n:.0f}% {elapsed}")
                    self.mode = "tqdm"
                except ImportError:
                    self.mode = "lines"
        return self

    def update(self, job) -> None:
        what = f"{job.id} {job.status.value}" + (f": {job.stage}" if job.stage and job.stage != job.status.value else "")
        if job.status.value == "queued" and job.queue_position:
            what += f" (position {job.queue_position})"
        if self.mode == "rich":
            self._bar.update(self._task, description=what, completed=job.progress)
        elif self.mode == "tqdm":
            self._bar.set_description_str(what)
            self._bar.n = round(job.progress * 100, 1)
            self._bar.refresh()
        elif self.mode == "lines":
            line = f"{time.strftime('%H:%M:%S')} {what} {_pct(job)}"
            if line[9:] != self._last:
                click.echo(line, err=True)
                self._last = line[9:]

    def __exit__(self, *exc: Any) -> None:
        if self.mode == "rich":
            self._bar.stop()
        elif self.mode == "tqdm":
            self._bar.close()


def _progress_mode(choice: str, default_off: str) -> str:
    if choice != "auto":
        return choice
    return "bar" if sys.stderr.isatty() else default_off


def _follow(client, job, *, timeout: Optional[float], progress: str):
    """Until the job is final: over server-sent events with a progress display, else long-poll."""
    vc = _client_module()
    if job.final:
        return job
    if progress == "none":
        return client.wait(job, timeout)
    last = job
    try:
        with _Progress(progress) as shown:
            shown.update(job)
            try:
                for last in client.stream(job, timeout=timeout):
                    shown.update(last)
            except vc.ApiConnectionError:  # events unavailable (a proxy?): long-poll instead
                last = client.wait(job, timeout)
                shown.update(last)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; {job.id} goes on (cancel it with: visionjobs jobs cancel {job.id})", err=True)
        sys.exit(130)
    return last if last.final else client.wait(last, timeout)


def _finish(client, job, *, out: Optional[Path], as_json: bool) -> None:
    """Print the job (downloading its outputs into `out` when it succeeded) and exit 1 when it
    failed or was canceled."""
    files = None
    if out is not None and job.status.value == "succeeded":
        files = client.download_outputs(job, out / job.id)  # one folder per job: no job overwrites another's
    if as_json:
        body = _job_json(job)
        if files is not None:
            body["files"] = [str(p) for p in files]
        _echo_json(body)
    else:
        _print_job(job, files)
    if job.final and job.status.value != "succeeded":
        sys.exit(EXIT_JOB_FAILED)


# ------------------------------------------------------------------------------- submit


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """--param key=value (value read as JSON when it parses, else a string; dotted keys nest)."""
    body: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE", param_hint="--param")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        target = body
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key}: {p} is not an object", param_hint="--param")
        target[last] = value
    return body


def _merge(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(body.get(k), dict):
            _merge(body[k], v)
        else:
            body[k] = v
    return body


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None and v != {}}


def _upload_ref(client, value: Optional[str]) -> Optional[str]:
    """An upload id or an http(s):// / data: URL (the service fetches it) as given, else the file
    at that path, uploaded."""
    if value is None:
        return None
    vc = _client_module()
    if (vc.is_upload_id(value) and not Path(value).exists()) or value[:8].lower().startswith(("http://", "https://",
                                                                                              "data:")):
        return value
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value}: no such file (and not an upload id)")
    return client.upload(path).id


def _image_refs(client, values: tuple[str, ...]) -> list[str]:
    """Upload ids or files; a directory stands for the image files in it (sorted)."""
    refs: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise click.BadParameter(f"{value}: no image files in this directory")
            refs += [client.upload(p).id for p in files]
        else:
            refs.append(_upload_ref(client, value))
    return refs


def submit_options(f: Callable) -> Callable:
    f = click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default="auto",
                     show_default=True, help="While waiting: a live bar (auto: when stderr is a terminal), "
                                             "a line per change, or nothing.")(f)
    f = click.option("--webhook-event", "webhook_events", multiple=True,
                     type=click.Choice(["running", "succeeded", "failed", "canceled"]),
                     help="Notify on this state (repeatable; default: the final states).")(f)
    f = click.option("--webhook-secret", default=None, help="HMAC key the deliveries are signed with (16+ characters).")(f)
    f = click.option("--webhook", "webhook_url", default=None, metavar="URL", help="POST job events to this URL.")(f)
    f = click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="Any other request field (VALUE as JSON; dotted keys nest). Repeatable.")(f)
    f = click.option("--idempotency-key", default=None, help="Resubmitting with the same key returns the same job.")(f)
    f = click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Download the outputs into this directory (implies --wait).")(f)
    f = click.option("--wait", is_flag=True, help="Wait for the job to finish (live progress on stderr).")(f)
    return connection_options(f)


def _submit(kind: str, build: Callable[[Any], dict[str, Any]], *, url, api_key, as_json, wait, out, timeout,
            idempotency_key, params, progress, webhook_url, webhook_secret, webhook_events) -> None:
    extra = _parse_params(params)
    if (webhook_url is None) != (webhook_secret is None):
        raise click.UsageError("--webhook and --webhook-secret go together")
    if webhook_events and webhook_url is None:
        raise click.UsageError("--webhook-event needs --webhook")
    with _Api(url, api_key) as client:
        body = _merge(_drop_none(build(client)), extra)
        if webhook_url is not None:
            body["webhook"] = _drop_none({"url": webhook_url, "secret": webhook_secret,
                                          "events": list(webhook_events) or None})
        job = client.submit(kind, body, idempotency_key=idempotency_key)
        if not (wait or out):
            if as_json:
                _echo_json(_job_json(job))
            else:
                click.echo(job.id)
            return
        if not as_json:
            click.echo(f"submitted {job.id} ({job.kind})", err=True)
        job = _follow(client, job, timeout=timeout, progress=_progress_mode(progress, "none"))
        _finish(client, job, out=out, as_json=as_json)


@click.group()
def submit() -> None:
    """Submit a job (prints its id; --wait to follow it, --out DIR to download its outputs)."""


@submit.command("colorize")
@click.argument("image")
@click.option("--prompt", default=None, help="Text describing the colours.")
@click.option("--negative-prompt", default=None)
@click.option("--strokes", "strokes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='JSON file: [{"color": "#RRGGBB", "width": 8, "points": [[x, y], ...]}, ...] '
                   '(or {"strokes": [...]}), in image pixels.')
@click.option("--stroke-image", default=None, help="RGBA stroke image (path or upload id); alpha > 0 marks strokes.")
@click.option("--exemplar", default=None, help="Colour exemplar image (path or upload id).")
@click.option("--seed", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--guidance", "guidance_mode", type=click.Choice(["cfg", "autoguidance", "none"]), default=None,
              help="Guidance mode (server default cfg).")
@click.option("--guidance-scale", type=float, default=None,
              help="Guidance scale; default per mode: cfg 7, autoguidance 2 (none ignores it).")
@click.option("--sag-scale", type=float, default=None)
@click.option("--deformable-decoder/--no-deformable-decoder", default=None)
@click.option("--auto-caption/--no-auto-caption", default=None,
              help="Caption an empty prompt with BLIP, as the official demo (server default: on).")
@click.option("--parity", type=click.Choice(["project", "official"]), default=None,
              help="official: every switch back to the official Control Color code (--param parity.X=Y for one).")
@click.option("--num-outputs", type=int, default=None)
@click.option("--format", "output_format", type=click.Choice(["png", "jpeg", "webp"]), default=None)
@submit_options
def submit_colorize(image, prompt, negative_prompt, strokes_file, stroke_image, exemplar, seed, steps, guidance_mode,
                    guidance_scale, sag_scale, deformable_decoder, auto_caption, parity, num_outputs, output_format,
                    **common) -> None:
    """Colorize IMAGE (a path or an upload id) with Control Color."""
    strokes = None
    if strokes_file is not None:
        try:
            data = json.loads(strokes_file.read_text())
        except ValueError as exc:
            raise click.BadParameter(f"{strokes_file}: not JSON ({exc})", param_hint="--strokes")
        strokes = data.get("strokes") if isinstance(data, dict) else data
        if not isinstance(strokes, list):
            raise click.BadParameter(f"{strokes_file}: expected a list of strokes", param_hint="--strokes")

    def build(client) -> dict[str, Any]:
        return dict(image=_upload_ref(client, image), prompt=prompt, negative_prompt=negative_prompt, strokes=strokes,
                    stroke_image=_upload_ref(client, stroke_image), exemplar=_upload_ref(client, exemplar), seed=seed,
                    steps=steps, guidance={"mode": guidance_mode, "scale": guidance_scale}, sag_scale=sag_scale,
                    deformable_decoder=deformable_decoder, auto_caption=auto_caption, parity=parity,
                    num_outputs=num_outputs, output_format=output_format)

    _submit("colorize", build, **common)


@submit.command("video-generate")
@click.argument("prompts", nargs=-1, required=True)
@click.option("--segments", type=int, default=None, help="Single prompt: how many segments to chain.")
@click.option("--overlap", type=int, default=None, help="Latent frames shared by adjacent segments.")
@click.option("--transition-segments", type=int, default=None)
@click.option("--kv-sharing/--no-kv-sharing", default=None, help="DiTCtrl KV-sharing attention.")
@click.option("--subject-token", "subject_tokens", multiple=True, help="Mask-guided KV sharing on this word.")
@click.option("--steps", type=int, default=None)
@click.option("--guidance-scale", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--fps", type=int, default=None)
@click.option("--metric", "metrics", multiple=True, type=click.Choice(["cscv"]))
@submit_options
def submit_video_generate(prompts, segments, overlap, transition_segments, kv_sharing, subject_tokens, steps,
                          guidance_scale, seed, width, height, fps, metrics, **common) -> None:
    """Generate a long video from PROMPTS, one per part, in order (DiTCtrl)."""
    def build(client) -> dict[str, Any]:
        return dict(prompts=list(prompts), segments=segments, overlap=overlap, transition_segments=transition_segments,
                    kv_sharing={"enabled": kv_sharing, "subject_tokens": list(subject_tokens) or None}, steps=steps,
                    guidance_scale=guidance_scale, seed=seed, width=width, height=height, fps=fps,
                    metrics=list(metrics) or None)

    _submit("video.generate", build, **common)


@submit.command("video-edit")
@click.argument("video", required=False)
@click.option("--source-prompt", default=None, help="What the clip shows (needed with VIDEO).")
@click.option("--edit", "edits", multiple=True, required=True, help="An edit prompt; one video each. Repeatable.")
@click.option("--tuned-model", default=None, help="Reuse an earlier tuning (tvm_...) instead of VIDEO.")
@click.option("--tune-steps", type=int, default=None)
@click.option("--frames", type=int, default=None)
@click.option("--frame-stride", default=None, metavar="N|spread",
              help="Take every N-th frame (server default 2, as the official) or 'spread' them over the clip.")
@click.option("--start-frame", type=int, default=None, help="The first frame taken (server default 0).")
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--guidance-scale", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--fps", type=int, default=None)
@click.option("--gif", is_flag=True, default=None, help="Also write a GIF of each edit.")
@submit_options
def submit_video_edit(video, source_prompt, edits, tuned_model, tune_steps, frames, frame_stride, start_frame, width,
                      height, steps, guidance_scale, seed, fps, gif, **common) -> None:
    """Edit VIDEO (a path or an upload id) with text prompts (Tune-A-Video), or re-edit with --tuned-model."""
    if (video is None) == (tuned_model is None):
        raise click.UsageError("give VIDEO or --tuned-model (exactly one)")

    def build(client) -> dict[str, Any]:
        return dict(video=_upload_ref(client, video), tuned_model=tuned_model, source_prompt=source_prompt,
                    edits=list(edits), tune_steps=tune_steps, frames=frames,
                    frame_stride=int(frame_stride) if frame_stride and frame_stride.isdigit() else frame_stride,
                    start_frame=start_frame, width=width, height=height, steps=steps,
                    guidance_scale=guidance_scale, seed=seed, fps=fps, gif=gif or None)

    _submit("video.edit", build, **common)


def _archive_ref(client, value: Optional[str]) -> Optional[str]:
    """`_upload_ref`, and a directory (a folder dataset: normal/, abnormal/, mask/) zipped in memory."""
    if value is None or not Path(value).is_dir():
        return _upload_ref(client, value)
    import io
    import zipfile

    root = Path(value)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise click.BadParameter(f"{value}: no image files under this directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # images are compressed already
        for p in files:
            zf.write(p, p.relative_to(root).as_posix())
    return client.upload(buf.getvalue(), filename=f"{root.name or 'dataset'}.zip", content_type="application/zip").id


@submit.command("anomaly-fit")
@click.argument("images", nargs=-1)
@click.option("--name", required=True, help="A name for the model.")
@click.option("--model", type=click.Choice(["patchcore", "reverse_distillation"]), default=None,
              help="patchcore (the default: fitted, no training) or reverse_distillation (trained).")
@click.option("--archive", default=None, help="Instead of IMAGES: a zip (path or upload id) of normal images or with "
                                              "normal/, abnormal/ and mask/ folders, or such a directory (zipped).")
@click.option("--abnormal-image", "abnormal_images", multiple=True,
              help="Dataset: an abnormal image (or a directory of them), with IMAGES. Repeatable.")
@click.option("--normal", "val_normal", multiple=True,
              help="PatchCore validation: a normal image (or a directory). Repeatable.")
@click.option("--abnormal", "val_abnormal", multiple=True,
              help="PatchCore validation: an abnormal image (or a directory). Repeatable.")
@click.option("--backbone", default=None, help="e.g. wide_resnet50_2, resnet18.")
@click.option("--coreset-ratio", type=float, default=None, help="PatchCore.")
@click.option("--image-size", type=int, default=None)
@click.option("--seed", type=int, default=None, help="Seeds the dataset split and the training.")
@click.option("--max-epochs", type=int, default=None, help="Reverse Distillation (default 200).")
@click.option("--patience", type=int, default=None, help="Reverse Distillation: epochs without improvement "
                                                         "before stopping early (0: never; default 3).")
@click.option("--batch-size", type=int, default=None, help="Reverse Distillation (default 16).")
@click.option("--learning-rate", type=float, default=None, help="Reverse Distillation (default 0.005).")
@submit_options
def submit_anomaly_fit(images, name, model, archive, abnormal_images, val_normal, val_abnormal, backbone,
                       coreset_ratio, image_size, seed, max_epochs, patience, batch_size, learning_rate,
                       **common) -> None:
    """Fit an anomaly model on normal IMAGES (paths, directories or upload ids), optionally with
    --abnormal-image ones, or on --archive: PatchCore, or Reverse Distillation (--model)."""
    if not images and archive is None:
        raise click.UsageError("give normal IMAGES or --archive")

    def build(client) -> dict[str, Any]:
        validation = None
        if val_normal or val_abnormal:
            validation = {"normal": _image_refs(client, val_normal), "abnormal": _image_refs(client, val_abnormal)}
        return dict(name=name, model=model, images=_image_refs(client, images) if images else None,
                    archive=_archive_ref(client, archive),
                    abnormal=_image_refs(client, abnormal_images) if abnormal_images else None,
                    validation=validation, backbone=backbone, coreset_ratio=coreset_ratio, image_size=image_size,
                    seed=seed, max_epochs=max_epochs, patience=patience, batch_size=batch_size,
                    learning_rate=learning_rate)

    _submit("anomaly.fit", build, **common)


@submit.command("anomaly-score")
@click.argument("model_id")
@click.argument("images", nargs=-1, required=True)
@submit_options
def submit_anomaly_score(model_id, images, **common) -> None:
    """Score IMAGES (paths, directories or upload ids) with the fitted anomaly model MODEL_ID."""
    _submit("anomaly.score", lambda client: dict(model_id=model_id, images=_image_refs(client, images)), **common)


# --------------------------------------------------------------------------------- jobs


@click.group()
def jobs() -> None:
    """List, inspect, cancel and watch jobs."""


@jobs.command("list")
@click.option("--kind", type=click.Choice(KINDS), default=None)
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Every page.")
@connection_options
def jobs_list(kind, status, limit, cursor, all_pages, url, api_key, as_json) -> None:
    """This tenant's jobs, newest first."""
    with _Api(url, api_key) as client:
        if all_pages:
            items, next_cursor = list(client.iter_jobs(kind=kind, status=status, page_size=limit)), None
        else:
            page = client.list_jobs(kind=kind, status=status, cursor=cursor, limit=limit)
            items, next_cursor = page.items, page.next_cursor
    if as_json:
        _echo_json({"items": [_job_json(j) for j in items], "next_cursor": next_cursor})
        return
    if not items:
        click.echo("no jobs", err=True)
        return
    rows = [(j.id, j.kind, j.status.value, _pct(j), _when(j.created_at), j.stage or "") for j in items]
    header = ("ID", "KIND", "STATUS", "PROGRESS", "CREATED", "STAGE")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}", err=True)


@jobs.command("show")
@click.argument("job_id")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 60), default=None,
              help="Long-poll up to this many seconds for a final state.")
@connection_options
def jobs_show(job_id, wait_s, url, api_key, as_json) -> None:
    """One job: state, progress, timestamps, error, output URLs."""
    with _Api(url, api_key) as client:
        job = client.get_job(job_id, wait=wait_s)
    if as_json:
        _echo_json(_job_json(job))
    else:
        _print_job(job)


@jobs.command("cancel")
@click.argument("job_id")
@connection_options
def jobs_cancel(job_id, url, api_key, as_json) -> None:
    """Cancel JOB_ID: a queued job at once, a running one within one step (a final job is left as it is)."""
    with _Api(url, api_key) as client:
        job = client.cancel(job_id)
    if as_json:
        _echo_json(_job_json(job))
    else:
        _print_job(job)


@jobs.command("watch")
@click.argument("job_id")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Download the outputs into this directory when it succeeds.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default="auto", show_default=True,
              help="A live bar (auto: when stderr is a terminal, else a line per change), lines, or nothing.")
@connection_options
def jobs_watch(job_id, out, timeout, progress, url, api_key, as_json) -> None:
    """Follow JOB_ID live until it is final (exit 1 when it failed or was canceled)."""
    with _Api(url, api_key) as client:
        job = client.get_job(job_id)
        job = _follow(client, job, timeout=timeout, progress=_progress_mode(progress, "lines"))
        _finish(client, job, out=out, as_json=as_json)
