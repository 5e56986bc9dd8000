"""`visionjobs tuned-models list | delete`: the Tune-A-Video tunings (`tvm_...`) video edits
keep, over the visionjobs-client package (registered by visionjobs/cli_jobs.py)."""
from __future__ import annotations

import click

from visionjobs.cli_jobs import _Api, _echo_json, _when, connection_options


@click.group("tuned-models")
def tuned_models() -> None:
    """Tuned video models (Tune-A-Video tunings kept by `submit video-edit`): list, delete."""


def _row(m) -> tuple[str, ...]:
    clip = m.clip
    size = f"{m.size_bytes / 1e6:.2f} MB" if m.size_bytes is not None else "-"
    return (m.id, f"{clip.get('frames', '?')}x{clip.get('width', '?')}x{clip.get('height', '?')}",
            str(m.tune_steps), size, _when(m.created_at), m.source_prompt)


@tuned_models.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Every page.")
@connection_options
def tuned_models_list(limit, cursor, all_pages, url, api_key, as_json) -> None:
    """This key's tuned video models, newest first."""
    with _Api(url, api_key) as client:
        if all_pages:
            items, next_cursor = list(client.iter_video_models(page_size=limit)), None
        else:
            page = client.list_video_models(cursor=cursor, limit=limit)
            items, next_cursor = page.items, page.next_cursor
    if as_json:
        _echo_json({"items": [m.model_dump(mode="json") for m in items], "next_cursor": next_cursor})
        return
    if not items:
        click.echo("no tuned video models", err=True)
        return
    header = ("ID", "FRAMES", "TUNE STEPS", "SIZE", "CREATED", "SOURCE PROMPT")
    rows = [_row(m) for m in items]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}", err=True)


@tuned_models.command("delete")
@click.argument("model_ids", nargs=-1, required=True)
@connection_options
def tuned_models_delete(model_ids, url, api_key, as_json) -> None:
    """Delete tuned video models and their stored artifacts."""
    with _Api(url, api_key) as client:
        for model_id in model_ids:
            client.delete_video_model(model_id)
            if not as_json:
                click.echo(f"deleted {model_id}")
    if as_json:
        _echo_json({"deleted": list(model_ids)})
