"""`visionjobs models fetch | check | convert-ctrlcolor`: pretrained weights for every kind."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

KIND_HELP = "A job kind or family (anomaly, video); repeatable. Default: every kind."


def _model_dir(model_dir: Path | None) -> Path:
    from service.core.config import get_settings

    target = model_dir or get_settings().model_dir
    if target is None:
        raise click.ClickException("set VISIONJOBS_MODEL_DIR or pass --model-dir")
    return Path(target)


def _kinds(kinds: tuple[str, ...]) -> list[str]:
    from service.kinds import KINDS, select

    try:
        return select(list(kinds or KINDS))
    except ValueError as exc:
        raise click.ClickException(str(exc))


@click.group()
def models() -> None:
    """Model weights: fetch (download + convert), check, convert-ctrlcolor."""


@models.command("fetch")
@click.option("--kind", "kinds", multiple=True, help=KIND_HELP)
@click.option("--model-dir", type=click.Path(path_type=Path), default=None, help="Default: VISIONJOBS_MODEL_DIR.")
@click.option("--dry-run", is_flag=True, help="Print what would be downloaded (files and sizes) and stop.")
@click.option("--from", "from_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Control Color checkpoints downloaded by hand (the authors' Google Drive release): "
                   "main_model.ckpt [+ content-guided_deformable_vae.ckpt] in this folder.")
@click.option("--controlcolor-repo", default=None,
              help="Hub repository of the Control Color checkpoints. Default: VISIONJOBS_CONTROLCOLOR_REPO.")
@click.option("--controlcolor-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON of converter architecture overrides {unet, controlnet, vae, clip_vision} for a checkpoint "
                   "that is not SD 1.5-sized (default: the released model's).")
def models_fetch(kinds: tuple[str, ...], model_dir: Path | None, dry_run: bool, from_dir: Path | None,
                 controlcolor_repo: str | None, controlcolor_config: Path | None) -> None:
    """Download (and convert) pretrained weights: sizes first, then the files (needs the Hub)."""
    from models.fetch import FetchFailed, Options, fetch
    from worker.config import WorkerSettings

    target = _model_dir(model_dir)
    opts = Options(dry_run=dry_run, from_dir=from_dir,
                   controlcolor_repo=controlcolor_repo or WorkerSettings().controlcolor_repo,
                   controlcolor_config=json.loads(controlcolor_config.read_text()) if controlcolor_config else {},
                   echo=click.echo)
    try:
        fetch(_kinds(kinds), target, opts)
    except FetchFailed as exc:
        raise click.ClickException(str(exc))
    if not dry_run:
        click.echo("")
        _report(_kinds(kinds), target, as_json=False)


def kind_status(kind: str, model_dir: Path) -> dict:
    """Per kind: what `auto` would pick, the pretrained files missing, and the optional
    features' missing files (what a pretrained worker would report)."""
    from models.profiles import missing_weights
    from service.kinds import KINDS
    from worker.capabilities import kind_capabilities
    from worker.config import WorkerSettings

    class Pretrained:  # the runtime view capability probes read
        settings = WorkerSettings(model_dir=model_dir, model_profile="pretrained")
        name = "models-check"

        @staticmethod
        def weights_fingerprint(_kind: str) -> None:  # a check hashes no weights
            return None

        @staticmethod
        def profile_for(_kind: str) -> str:
            return "pretrained"

    caps = kind_capabilities(Pretrained(), kind)
    missing = [m for model in KINDS[kind].models for m in missing_weights(model, model_dir)]
    return {"kind": kind, "present": not missing, "missing": missing, "auto": "tiny" if missing else "pretrained",
            "features": {name: files for name, files in caps["features"].items()}}


def _report(kinds: list[str], model_dir: Path, as_json: bool) -> bool:
    rows = [kind_status(k, model_dir) for k in kinds]
    if as_json:
        click.echo(json.dumps({"model_dir": str(model_dir), "kinds": rows}, indent=2))
    else:
        click.echo(f"model dir {model_dir}")
        for r in rows:
            click.echo(f"{r['kind']:<15} {'present' if r['present'] else 'MISSING':<8} auto -> {r['auto']}")
            for m in r["missing"]:
                click.echo(f"    missing: {m}")
            for name, files in r["features"].items():
                if files:
                    click.echo(f"    optional {name}: missing {', '.join(files)}")
    return all(r["present"] for r in rows)


@models.command("check")
@click.option("--kind", "kinds", multiple=True, help=KIND_HELP)
@click.option("--model-dir", type=click.Path(path_type=Path), default=None, help="Default: VISIONJOBS_MODEL_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_check(kinds: tuple[str, ...], model_dir: Path | None, as_json: bool) -> None:
    """Per kind: pretrained weights present or missing (each file named), and the profile
    `auto` would pick. Exit status 1 when a kind lacks its pretrained weights."""
    if not _report(_kinds(kinds), _model_dir(model_dir), as_json):
        sys.exit(1)


@models.command("convert-ctrlcolor")
@click.argument("main_ckpt", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--deformable-vae", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="content-guided_deformable_vae.ckpt of the official release.")
@click.option("--clip-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="CLIP ViT-L/14 tokenizer/config folder (default: {out}/downloads/clip-vit-large-patch14, "
                   "where `models fetch` puts it).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="The model dir: writes controlcolor/{unet,controlnet,vae,...} under it.")
def models_convert_ctrlcolor(main_ckpt: Path, deformable_vae: Path | None, clip_dir: Path | None, out_dir: Path) -> None:
    """Convert the official Control Color checkpoint to diffusers folders (strict).
    `models fetch --kind colorize` runs this itself."""
    from models.colorization.convert import ConversionError, convert_ctrlcolor

    try:
        for folder in convert_ctrlcolor(main_ckpt, out_dir, deformable_vae, clip_dir=clip_dir):
            click.echo(folder)
    except ConversionError as exc:
        raise click.ClickException(str(exc))
