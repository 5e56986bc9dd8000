"""The `visionjobs` command. Heavy imports happen inside each command, so `api` never loads torch."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

import click


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("VISIONJOBS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """visionjobs: GPU inference jobs for vision diffusion methods."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", default="./data", show_default=True, type=click.Path(path_type=Path))
def run(host: str, port: int, data_dir: Path) -> None:
    """Embedded: API and a worker in one process, no other service needed."""
    _logging()
    from visionjobs.embedded import run_embedded

    run_embedded(host, port, data_dir)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Uvicorn worker processes.")
@click.option("--allow-anonymous", is_flag=True, help="Serve without API keys (one anonymous tenant).")
def api(host: str, port: int, workers: int, allow_anonymous: bool) -> None:
    """The HTTP API alone (workers run as `visionjobs worker`)."""
    _logging()
    import uvicorn

    from service.core.config import get_settings

    settings = get_settings()
    if not settings.key_map() and not (allow_anonymous or settings.allow_anonymous):
        raise click.ClickException("no API keys: set VISIONJOBS_API_KEYS, or pass --allow-anonymous explicitly")
    if settings.distributed and not settings.s3_bucket and not settings.signing_secret:
        raise click.ClickException("distributed mode with the local object store needs VISIONJOBS_SIGNING_SECRET")
    if allow_anonymous:
        os.environ["VISIONJOBS_ALLOW_ANONYMOUS"] = "true"
        get_settings.cache_clear()
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info",
                timeout_graceful_shutdown=5)


@main.command()
@click.option("--gpus", default=None, help="Comma-separated CUDA device ids (one process each), or `all` "
                                           "(every GPU visible); empty: CPU.")
@click.option("--queues", default=None, help="Comma-separated queues (job kinds).")
@click.option("--concurrency", default=None, type=int, help="Processes per GPU (or CPU processes).")
@click.option("--preload", is_flag=True, default=None, help="Load the queues' models before the first job.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads per process (OMP_NUM_THREADS). Default: the host's cores split evenly among the "
                   "processes, or OMP_NUM_THREADS when already set.")
def worker(gpus: str | None, queues: str | None, concurrency: int | None, preload: bool | None,
           threads: int | None) -> None:
    """Start worker processes, one per GPU, pinned with CUDA_VISIBLE_DEVICES."""
    _logging()
    from service.kinds import queues as known_queues
    from worker.config import WorkerSettings
    from worker.launcher import expand_gpus, plan, run as launch

    s = WorkerSettings()
    gpu_list = expand_gpus(s.gpus if gpus is None else gpus)
    queue_list = [q.strip() for q in (s.queues if queues is None else queues).split(",") if q.strip()]
    queue_list = queue_list or known_queues()
    unknown = [q for q in queue_list if q not in known_queues()]
    if unknown:
        raise click.ClickException(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(known_queues())}")
    n = s.concurrency if concurrency is None else concurrency
    if n < 1:
        raise click.ClickException("--concurrency must be at least 1")
    children = plan(gpu_list, queue_list, n, bool(s.preload if preload is None else preload), socket.gethostname(),
                    threads=threads)
    sys.exit(launch(children, stop_grace_s=s.drain_timeout_s + 15))


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write to a file instead of stdout.")
def openapi(out: Path | None) -> None:
    """Print the OpenAPI document of the API."""
    from service.app import create_app

    text = json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"
    if out:
        out.write_text(text)
    else:
        click.echo(text, nl=False)


# `models fetch | check | convert-ctrlcolor`
from visionjobs.cli_models import models  # noqa: E402

main.add_command(models)

# `submit` and `jobs`: the HTTP client side (imports visionjobs_client only when one of them runs).
from visionjobs.cli_jobs import register as register_job_commands  # noqa: E402

register_job_commands(main)


if __name__ == "__main__":
    main()
