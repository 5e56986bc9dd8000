"""`visionjobs models fetch`: download (and convert) the pretrained weights of every kind.

`MANIFEST` is keyed by `models.profiles` entry (the names job kinds list in `JobKind.models`,
service/kinds.py), one `Download` per Hub repository, with exact allow-patterns (one variant
per file; safetensors where the repository has them). Fetch lists each repository first and
prints every file it will download with its size; `--dry-run` stops there. A pattern that
matches nothing fails the plan (the repository changed), before anything is downloaded.

Diffusers-format repositories land in the folder layout the `pretrained` profile reads
(`$VISIONJOBS_MODEL_DIR/<folder>`); `place` links a downloaded file to the name a loader reads
(timm's `model.safetensors` -> `anomaly/<arch>.safetensors`); `PREPARE` runs after a model's
downloads (Control Color: the checkpoint conversion, so `fetch --kind colorize` alone leaves
`controlcolor/` ready).

Control Color: the authors publish the checkpoints on Google Drive only (CONTROLCOLOR_DRIVE);
`--from DIR` converts files downloaded from there by hand. The Hub default is a third-party
mirror (CONTROLCOLOR_MIRROR, not the authors'): what it serves is checked by its key layout
(the converter refuses any missing or unexpected key by name) before anything is converted,
and the source repository, revision and file hash are recorded in controlcolor/fetched.json.

To add a repository: append a `Download` to the model's list (or a new key named like its
`models.profiles` entry).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from models.colorization import weights_layout as cc

CONTROLCOLOR_MIRROR = "UPstud/ColorCtrl"  # third-party Hub mirror of the official release
CONTROLCOLOR_DRIVE = "https://drive.google.com/drive/folders/1lgqstNwrMCzymowRsbGM-4hk0-7L-eOT"


@dataclass(frozen=True)
class Download:
    repo_id: str
    folder: str                      # under the model dir
    patterns: tuple[str, ...]        # exact allow-patterns (huggingface_hub's fnmatch rules)
    purpose: str = ""
    revision: str = "main"
    place: tuple[tuple[str, str], ...] = ()  # (file in `folder`, path under the model dir), linked
    optional: tuple[str, ...] = ()   # patterns allowed to match nothing


_SD15 = ("model_index.json", "scheduler/scheduler_config.json",
         "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
         "tokenizer/special_tokens_map.json",
         "text_encoder/config.json", "text_encoder/model.safetensors",
         "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
         "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
_COGVIDEOX = ("model_index.json", "scheduler/scheduler_config.json",
              "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
              "tokenizer/added_tokens.json",
              "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
              "text_encoder/model-*-of-*.safetensors",
              "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
_CLIP_TOKENIZER = ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def _timm(arch: str) -> Download:
    return Download(f"timm/{arch}.tv_in1k", f"downloads/timm-{arch}.tv_in1k", ("model.safetensors",),
                    f"ImageNet {arch} (torchvision's weights and key names, BSD-3-Clause)",
                    place=(("model.safetensors", f"anomaly/{arch}.safetensors"),))


MANIFEST: dict[str, list[Download]] = {
    "colorize": [
        Download(CONTROLCOLOR_MIRROR, cc.CONTROLCOLOR_DOWNLOAD, (cc.MAIN_CHECKPOINT, cc.DEFORMABLE_CHECKPOINT),
                 "Control Color checkpoints (S-Lab License 1.0, non-commercial), third-party mirror of the "
                 "authors' Google Drive release", optional=(cc.DEFORMABLE_CHECKPOINT,)),
        Download("openai/clip-vit-large-patch14", cc.CLIP_L14_DOWNLOAD, _CLIP_TOKENIZER,
                 "CLIP ViT-L/14 tokenizer and text config (the checkpoint holds the weights)"),
        Download("Salesforce/blip-image-captioning-base", "blip-image-captioning-base",
                 ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
                 "BLIP base (COCO captioning): the prompt of unconditional requests, as the official demo"),
    ],
    "video.generate": [
        Download("THUDM/CogVideoX-2b", "cogvideox-2b", _COGVIDEOX,
                 "CogVideoX-2B transformer, VAE, T5 encoder (Apache-2.0)", optional=("tokenizer/added_tokens.json",)),
    ],
    "video.cscv": [
        # the repository's main branch has no safetensors file: the PyTorch .bin (loaded weights-only)
        Download("openai/clip-vit-base-patch32", "clip-vit-base-patch32", ("config.json", "pytorch_model.bin"),
                 "CLIP ViT-B/32 vision tower for the CSCV metric"),
    ],
    "video.edit": [
        Download("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5", _SD15,
                 "Stable Diffusion 1.5, fp32 safetensors (CreativeML OpenRAIL-M) for Tune-A-Video"),
    ],
    "anomaly": [_timm("wide_resnet50_2"), _timm("resnet18")],
}


class FetchFailed(RuntimeError):
    pass


@dataclass
class Planned:
    download: Download
    commit: str | None                    # the resolved revision (None: local files)
    files: list[tuple[str, int | None]]   # (path in the repository, size in bytes)
    local_dir: Path | None = None         # --from: files taken from here instead

    @property
    def size(self) -> int:
        return sum(s or 0 for _, s in self.files)


@dataclass
class Options:
    dry_run: bool = False
    from_dir: Path | None = None          # Control Color checkpoints downloaded by hand
    controlcolor_repo: str | None = None  # another Hub repository for the checkpoints
    controlcolor_config: dict = field(default_factory=dict)  # converter overrides (unet/controlnet/vae/clip_vision)
    echo: Callable[[str], None] = print


def models_of(kinds: list[str]) -> list[str]:
    """The `models.profiles` entries the job kinds (or families: "anomaly", "video") load."""
    from service.kinds import KINDS, select

    try:
        names = select(kinds)
    except ValueError as exc:
        raise FetchFailed(str(exc)) from exc
    out: list[str] = []
    for name in names:
        out += [m for m in KINDS[name].models + KINDS[name].optional_models if m not in out]
    return out


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _downloads(model: str, opts: Options) -> list[Download]:
    items = list(MANIFEST.get(model, []))
    if model == "colorize" and opts.controlcolor_repo:
        items = [replace(d, repo_id=opts.controlcolor_repo) if d.folder == cc.CONTROLCOLOR_DOWNLOAD else d
                 for d in items]
    return items


def _endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def _plan_local(d: Download, from_dir: Path) -> Planned:
    if not (from_dir / cc.MAIN_CHECKPOINT).is_file():
        raise FetchFailed(f"--from {from_dir}: no {cc.MAIN_CHECKPOINT} there (download the release from "
                          f"{CONTROLCOLOR_DRIVE})")
    files = [(n, (from_dir / n).stat().st_size) for n in (cc.MAIN_CHECKPOINT, cc.DEFORMABLE_CHECKPOINT)
             if (from_dir / n).is_file()]
    return Planned(d, None, files, local_dir=from_dir)


def _plan_remote(api, d: Download) -> Planned:
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    commit = api.repo_info(d.repo_id, revision=d.revision).sha
    tree = {f.path: f.size for f in api.list_repo_tree(d.repo_id, recursive=True, revision=commit)
            if isinstance(f, RepoFile)}
    unmatched = [p for p in d.patterns if p not in d.optional and not list(filter_repo_objects(tree, allow_patterns=[p]))]
    if unmatched:
        raise FetchFailed(f"{d.repo_id}@{commit[:10]}: nothing matches {', '.join(unmatched)} (the repository "
                          f"changed?); it has {', '.join(sorted(tree)[:20])}")
    return Planned(d, commit, [(p, tree[p]) for p in sorted(filter_repo_objects(tree, allow_patterns=list(d.patterns)))])


def plan(models: list[str], opts: Options) -> list[Planned]:
    """What fetch would download, per repository, with sizes; FetchFailed naming every
    repository that could not be listed (offline, no access) or no longer matches."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:  # the API image has no ML stack
        raise FetchFailed("huggingface_hub is not installed: run this in the worker image") from exc
    api, plans, failed = HfApi(endpoint=_endpoint()), [], []
    for model in models:
        for d in _downloads(model, opts):
            try:
                if opts.from_dir is not None and d.folder == cc.CONTROLCOLOR_DOWNLOAD:
                    plans.append(_plan_local(d, Path(opts.from_dir)))
                else:
                    plans.append(_plan_remote(api, d))
            except FetchFailed as exc:
                failed.append(str(exc))
            except Exception as exc:  # offline, unknown repository, gated, server error
                failed.append(f"{d.repo_id} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
    if failed:
        raise FetchFailed("cannot fetch (no network, no access, or the repository changed):\n  " + "\n  ".join(failed))
    return plans


def describe(plans: list[Planned]) -> str:
    lines = []
    for p in plans:
        src = f"{p.local_dir} (local)" if p.local_dir else f"{p.download.repo_id}@{p.commit[:10]}"
        lines.append(f"{src} -> {p.download.folder}/  {human(p.size)}  ({p.download.purpose})")
        lines += [f"    {human(size):>10}  {path}" for path, size in p.files]
    lines.append(f"total {human(sum(p.size for p in plans))} in {sum(len(p.files) for p in plans)} files")
    return "\n".join(lines)


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # no second copy on disk
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def download(plans: list[Planned], model_dir: Path, echo: Callable[[str], None] = print) -> list[Path]:
    from huggingface_hub import hf_hub_download

    done = []
    for p in plans:
        if p.local_dir is not None:
            continue  # converted from where it lies
        dest = model_dir / p.download.folder
        for path, size in p.files:
            echo(f"downloading {p.download.repo_id}/{path} ({human(size)})")
            hf_hub_download(p.download.repo_id, path, revision=p.commit, local_dir=dest, endpoint=_endpoint())
        for src, target in p.download.place:
            _link(dest / src, model_dir / target)
            done.append(model_dir / target)
        done.append(dest)
    return done


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_colorize(model_dir: Path, plans: list[Planned], opts: Options) -> list[Path]:
    """Convert the Control Color checkpoint into controlcolor/ (checked by key layout first)."""
    from models.colorization.convert import ConversionError, convert_ctrlcolor

    (ckpt,) = [p for p in plans if p.download.folder == cc.CONTROLCOLOR_DOWNLOAD]
    src = ckpt.local_dir or model_dir / cc.CONTROLCOLOR_DOWNLOAD
    main, deformable = src / cc.MAIN_CHECKPOINT, src / cc.DEFORMABLE_CHECKPOINT
    record = {"source": ckpt.local_dir and str(ckpt.local_dir) or f"hf://{ckpt.download.repo_id}@{ckpt.commit}",
              "third_party_mirror": ckpt.local_dir is None and ckpt.download.repo_id == CONTROLCOLOR_MIRROR,
              "main_model_sha256": _sha256(main), "licence": "S-Lab License 1.0 (non-commercial use only)"}
    marker = model_dir / cc.CONTROLCOLOR_DIR / "fetched.json"
    if marker.is_file() and json.loads(marker.read_text()).get("main_model_sha256") == record["main_model_sha256"]:
        opts.echo(f"controlcolor/ is already converted from this checkpoint ({record['main_model_sha256'][:12]})")
        return [model_dir / cc.CONTROLCOLOR_DIR]
    opts.echo(f"converting {main} (checking its key layout first)")
    cfg = opts.controlcolor_config
    try:
        written = convert_ctrlcolor(main, model_dir, deformable if deformable.is_file() else None,
                                    clip_dir=model_dir / cc.CLIP_L14_DOWNLOAD,
                                    unet_config=cfg.get("unet"), controlnet_config=cfg.get("controlnet"),
                                    vae_config=cfg.get("vae"), clip_vision_config=cfg.get("clip_vision"))
    except ConversionError as exc:
        raise FetchFailed(f"{record['source']}: not a Control Color checkpoint in the official layout: {exc}") from exc
    marker.write_text(json.dumps(record, indent=2))
    return [Path(w) for w in written]


PREPARE: dict[str, Callable[[Path, list[Planned], Options], list[Path]]] = {"colorize": prepare_colorize}


def fetch(kinds: list[str], model_dir: Path, opts: Options | None = None) -> list[Path]:
    """Plan (printed with sizes), then download and prepare; the plan alone with dry_run."""
    opts = opts or Options()
    model_dir = Path(model_dir)
    models = models_of(kinds)
    plans = plan(models, opts)
    opts.echo(describe(plans))
    if opts.dry_run:
        return []
    done = download(plans, model_dir, opts.echo)
    for model in models:
        if model in PREPARE:
            done += PREPARE[model](model_dir, [p for p in plans if p.download in _downloads(model, opts)], opts)
    return done
