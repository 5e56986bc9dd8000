"""Convert the official Control Color checkpoints to the diffusers folders `models.profiles`
loads (`visionjobs models convert-ctrlcolor` calls `convert_ctrlcolor`).

The main checkpoint (`main_model.ckpt`) is a PyTorch Lightning checkpoint of `ControlLDM`:
    model.diffusion_model.           inpainting UNet (9 input channels)     -> controlcolor/unet
    control_model.                   SD-1.5 ControlNet (3-channel hint)     -> controlcolor/controlnet
    first_stage_model.               KL VAE                                 -> controlcolor/vae
    cond_stage_model.transformer.    CLIP ViT-L/14 text tower               -> controlcolor/text_encoder
    cond_stage_model.ImageEmbedder.model.   CLIP ViT-B/32 vision tower, only in a checkpoint
                                     trained with exemplars                 -> controlcolor/image_encoder
dropped: optimizer state (outside `state_dict`), the diffusion schedule buffers (betas,
alphas_cumprod, ...; the scheduler config replaces them), `loss.*`, and a few training-only
parts (EMA, the VGG contextual-loss network, the exemplar embedder's unused `imageconv`).
Anything else is refused by name. The deformable VAE file (`content-guided_deformable_vae.ckpt`)
is a Lightning checkpoint of a whole autoencoder with five deformable convs in its decoder
-> controlcolor/deformable_vae.

The weights are converted with diffusers' single-file conversion functions
(`convert_ldm_unet_checkpoint`, `convert_controlnet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`) against explicit configs (SD-1.5 inpainting UNet with 9 input
channels, SD-1.5 ControlNet, SD VAE), then loaded strictly. Before that, every part's keys
are checked against the official layout the target model implies (the inverse mapping below),
so a missing or unexpected key is refused with its official name. Checkpoints are read with
`torch.load(weights_only=True)`: no code from the file runs.

The checkpoint holds weights only: the CLIP tokenizer and text-encoder config come from a
folder of openai/clip-vit-large-patch14 (`clip_dir`; `visionjobs models fetch` downloads it to
{model_dir}/downloads/clip-vit-large-patch14, the default).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from models.colorization import weights_layout as layout
from models.colorization.deformable import ContentGuidedVAE

PREFIXES = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
    "image_encoder": "cond_stage_model.ImageEmbedder.model.",
}
# LatentDiffusion's registered schedule buffers and the like (top level, no dot)
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "scale_factor", "cond_ids",
}
DROPPED_PREFIXES = (
    "loss.", "model_ema.", "contextual_stage_model.", "contextual_loss.",
    "cond_stage_model.ImageEmbedder.imageconv.",  # defined by the official embedder, unused in its forward
    "first_stage_model.loss.",
)
# transformers keeps CLIP's position_ids as a non-persistent buffer now; old checkpoints have it
_IGNORABLE = re.compile(r"(^|\.)position_ids$")

# ----------------------------------------------------------------- explicit configs (SD 1.5)

UNET_CONFIG = dict(  # SD-1.5 inpainting UNet: latent 4 + mask 1 + masked-image latent 4
    sample_size=64, in_channels=9, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, use_linear_projection=False,
)
CONTROLNET_CONFIG = dict(  # SD-1.5 ControlNet over the 4-channel latent with a 3-channel hint
    in_channels=4, conditioning_channels=3,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, use_linear_projection=False, conditioning_embedding_out_channels=(16, 32, 96, 256),
)
VAE_CONFIG = dict(  # SD's KL-f8 autoencoder (ddconfig ch 128, ch_mult 1,2,4,4, 2 res blocks)
    sample_size=512, in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, scaling_factor=0.18215,
)
SCHEDULER_CONFIG = dict(  # the training schedule; 'leading' + offset 1 = ldm's DDIM timesteps
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading",
)


class ConversionError(ValueError):
    """The checkpoint does not fit the expected layout; the message names the keys."""


# ----------------------------------------------------------------- diffusers -> official names
# The inverse of diffusers' single-file mapping, for the architectures above. Used to check a
# checkpoint's keys by their official names before converting, and to write official-layout
# checkpoints (tests, exports).

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{_UNET_RESNET[head]}.{tail}"


def unet_key_to_original(key: str, layers_per_block: int, up_attention: list[bool] | None = None,
                         cond_embedding_blocks: int = 6) -> str:
    """A diffusers UNet2DConditionModel / ControlNetModel key -> the ldm (openaimodel) key."""
    L1 = layers_per_block + 1
    for d, o in _UNET_TOP.items():
        if key.startswith(d + "."):
            return o + key[len(d):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * L1 + j}.0.{_resnet(rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * L1 + j}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * L1}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{b * L1 + j}.0.{_resnet(rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{b * L1 + j}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if up_attention and up_attention[b] else 1
        return f"output_blocks.{b * L1 + layers_per_block}.{slot}.conv.{m[2]}"
    # ControlNet-only parts
    if m := re.match(r"controlnet_cond_embedding\.conv_in\.(.+)", key):
        return f"input_hint_block.0.{m[1]}"
    if m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    if m := re.match(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
        return f"input_hint_block.{2 * (cond_embedding_blocks + 1)}.{m[1]}"
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.match(r"controlnet_mid_block\.(.+)", key):
        return f"middle_block_out.0.{m[1]}"
    raise KeyError(f"no official name known for UNet/ControlNet key {key!r}")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_original(key: str, num_levels: int) -> str:
    """A diffusers AutoencoderKL key -> the ldm (taming) autoencoder key."""
    for side in ("encoder", "decoder"):
        if key.startswith(f"{side}.conv_norm_out."):
            return f"{side}.norm_out." + key.split(".", 2)[2]
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def _is_vae_attn_linear(key: str) -> bool:
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", key))


def unet_state_dict_to_original(model: UNet2DConditionModel | ControlNetModel) -> dict[str, torch.Tensor]:
    cfg = model.config
    up_attention = [("CrossAttn" in t) for t in getattr(cfg, "up_block_types", ())] or None
    blocks = len(getattr(cfg, "conditioning_embedding_out_channels", (0, 0, 0, 0))) * 2 - 2
    return {unet_key_to_original(k, cfg.layers_per_block, up_attention, blocks): v for k, v in model.state_dict().items()}


def vae_state_dict_to_original(model: AutoencoderKL) -> dict[str, torch.Tensor]:
    n = len(model.config.block_out_channels)
    out = {}
    for k, v in model.state_dict().items():
        out[vae_key_to_original(k, n)] = v[:, :, None, None] if _is_vae_attn_linear(k) else v
    return out


DCN_NAMES = {"dcn_in": "decoder.dcn_in", "dcn_mid.0": "decoder.mid.block_1.dcn1", "dcn_mid.1": "decoder.mid.block_1.dcn2",
             "dcn_mid.2": "decoder.mid.block_2.dcn1", "dcn_mid.3": "decoder.mid.block_2.dcn2"}


def deformable_state_dict_to_original(model: ContentGuidedVAE) -> dict[str, torch.Tensor]:
    out = vae_state_dict_to_original(model.vae)
    for k, v in model.state_dict().items():
        for ours, theirs in DCN_NAMES.items():
            if k.startswith(ours + "."):
                out[theirs + k[len(ours):]] = v
    return out


# The official checkpoint was saved with transformers 4.x, whose CLIPTextModel / CLIPVisionModel
# nest everything under `text_model.` / `vision_model.`; transformers 5 flattened those
# (its from_pretrained renames old keys on load). We accept both on the model side.
CLIP_INNER_PREFIX = {"text_encoder": "text_model.", "image_encoder": "vision_model."}


def clip_state_dict_to_original(model, name: str) -> dict[str, torch.Tensor]:
    prefix = CLIP_INNER_PREFIX[name]
    return {(k if k.startswith(prefix) else prefix + k): v for k, v in model.state_dict().items()}


def _clip_to_model_keys(state: dict, model, name: str) -> dict:
    prefix = CLIP_INNER_PREFIX[name]
    if any(k.startswith(prefix) for k in model.state_dict()):
        return state
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def export_original_checkpoint(unet, controlnet, vae, text_encoder, image_encoder=None) -> dict[str, torch.Tensor]:
    """diffusers / transformers modules -> a `ControlLDM` state dict in the official key layout
    (the inverse of `convert_ctrlcolor`; tests write synthetic official checkpoints with it)."""
    sd = {}
    for name, part in (("unet", unet_state_dict_to_original(unet)), ("controlnet", unet_state_dict_to_original(controlnet)),
                       ("vae", vae_state_dict_to_original(vae)),
                       ("text_encoder", clip_state_dict_to_original(text_encoder, "text_encoder"))):
        sd.update({PREFIXES[name] + k: v for k, v in part.items()})
    if image_encoder is not None:
        sd.update({PREFIXES["image_encoder"] + k: v
                   for k, v in clip_state_dict_to_original(image_encoder, "image_encoder").items()})
    return sd


# ----------------------------------------------------------------- reading and splitting

def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint (or a bare state dict), read with
    weights_only=True (memory-mapped when the file format allows it)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: {exc}). Only plain "
            f"tensors and containers are accepted; re-save the state_dict in a trusted environment if the file "
            f"holds other objects") from exc
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{path}: no state_dict of tensors found (keys: {list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    return sd


def split_main_checkpoint(sd: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str], list[str]]:
    """-> ({part: {key without prefix: tensor}}, dropped keys, unknown keys)."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    dropped, unknown = [], []
    for key, value in sd.items():
        if key in SCHEDULE_BUFFERS or key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
            continue
        for name, prefix in PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    return parts, dropped, unknown


def _name_list(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_keys(label: str, prefix: str, got: dict, expected: dict, problems: list[str]) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected and not _IGNORABLE.search(k)]
    if missing:
        problems.append(f"{label}: missing keys {_name_list(prefix + k for k in missing)}")
    if unexpected:
        problems.append(f"{label}: unexpected keys {_name_list(prefix + k for k in unexpected)}")
    mismatched = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        problems.append(f"{label}: shape mismatch for " + _name_list(
            f"{prefix}{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched))


def _load_strict(label: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not (_IGNORABLE.search(k) and k not in expected)}
    absent = [k for k, v in state.items() if v is None]
    missing = [k for k in expected if k not in state] + absent
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ConversionError(f"{label}: after conversion, missing {_name_list(missing) or 'none'}; "
                              f"unexpected {_name_list(unexpected) or 'none'}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"{label}: {exc}") from exc


def _consumed(source: dict[str, torch.Tensor], converted: dict) -> list[str]:
    """Source keys whose tensor the conversion did not use (diffusers' functions move tensors
    or views of them, so storage pointers identify what was taken)."""
    used = {v.data_ptr() for v in converted.values() if isinstance(v, torch.Tensor) and v.numel()}
    return [k for k, v in source.items() if v.numel() and v.data_ptr() not in used]


# ----------------------------------------------------------------- text encoder config

def _text_config(clip_dir: Path) -> CLIPTextConfig:
    cfg = clip_dir / "config.json"
    if not cfg.is_file():
        raise ConversionError(f"{cfg} not found: clip_dir must be a folder of openai/clip-vit-large-patch14 "
                              f"(config.json + tokenizer files)")
    return CLIPTextConfig.from_pretrained(clip_dir, local_files_only=True)


def default_clip_dir(out_dir: Path) -> Path:
    """Where `visionjobs models fetch` puts openai/clip-vit-large-patch14."""
    return Path(out_dir) / layout.CLIP_L14_DOWNLOAD


# ----------------------------------------------------------------- the converter

def convert_ctrlcolor(main_ckpt: Path, out_dir: Path, deformable_vae_ckpt: Path | None = None, *,
                      clip_dir: Path | None = None, clip_vision_config: dict | None = None,
                      unet_config: dict | None = None, controlnet_config: dict | None = None,
                      vae_config: dict | None = None, overwrite: bool = True) -> list[str]:
    """Convert `main_ckpt` (and `deformable_vae_ckpt`) into `{out_dir}/controlcolor/...`.

    out_dir is the model dir (VISIONJOBS_MODEL_DIR). clip_dir: the CLIP ViT-L/14 folder with
    config.json and tokenizer files (default: {out_dir}/downloads/clip-vit-large-patch14).
    clip_vision_config: CLIPVisionConfig kwargs for an exemplar-trained checkpoint (default:
    CLIPVisionConfig() = ViT-B/32). unet/controlnet/vae_config: override the SD-1.5 configs
    (the tests convert tiny checkpoints). Everything is converted and loaded strictly before
    anything is written; each component folder is then replaced as a whole.

    Returns the folders written (absolute paths). Raises ConversionError naming missing or
    unexpected keys, or a missing CLIP folder."""
    out_dir = Path(out_dir)
    clip_dir = Path(clip_dir) if clip_dir is not None else default_clip_dir(out_dir)
    text_config = _text_config(clip_dir)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    except Exception as exc:
        raise ConversionError(f"{clip_dir}: no CLIP tokenizer (vocab.json + merges.txt) there ({exc})") from exc

    sd = load_checkpoint(main_ckpt)
    parts, _dropped, unknown = split_main_checkpoint(sd)
    problems = []
    if unknown:
        problems.append(f"unexpected keys outside the known parts: {_name_list(unknown)}")

    models: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel(**(unet_config or UNET_CONFIG)),
        "controlnet": ControlNetModel(**(controlnet_config or CONTROLNET_CONFIG)),
        "vae": AutoencoderKL(**(vae_config or VAE_CONFIG)),
        "text_encoder": CLIPTextModel(text_config),
    }
    if parts["image_encoder"]:
        models["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(**(clip_vision_config or {})))
    expected = {
        "unet": unet_state_dict_to_original(models["unet"]),
        "controlnet": unet_state_dict_to_original(models["controlnet"]),
        "vae": vae_state_dict_to_original(models["vae"]),
        "text_encoder": clip_state_dict_to_original(models["text_encoder"], "text_encoder"),
    }
    if "image_encoder" in models:
        expected["image_encoder"] = clip_state_dict_to_original(models["image_encoder"], "image_encoder")
    for name, exp in expected.items():
        _check_keys(name, PREFIXES[name], parts[name], exp, problems)
    if problems:
        raise ConversionError(f"{main_ckpt}: the checkpoint does not match the Control Color layout:\n  "
                              + "\n  ".join(problems))

    prefixed = {name: {PREFIXES[name] + k: v for k, v in parts[name].items()} for name in parts}
    converted = {
        "unet": convert_ldm_unet_checkpoint(prefixed["unet"], dict(models["unet"].config)),
        "controlnet": convert_controlnet_checkpoint(prefixed["controlnet"], dict(models["controlnet"].config)),
        "vae": convert_ldm_vae_checkpoint(prefixed["vae"], dict(models["vae"].config)),
        "text_encoder": _clip_to_model_keys(convert_ldm_clip_checkpoint(prefixed["text_encoder"]),
                                            models["text_encoder"], "text_encoder"),
    }
    if "image_encoder" in models:
        converted["image_encoder"] = _clip_to_model_keys(
            convert_ldm_clip_checkpoint(prefixed["image_encoder"], PREFIXES["image_encoder"]),
            models["image_encoder"], "image_encoder")
    for name, state in converted.items():
        left = [k for k in _consumed(prefixed[name], state) if not _IGNORABLE.search(k)]
        if left:
            raise ConversionError(f"{name}: the conversion left keys unused: {_name_list(left)}")
        _load_strict(name, models[name], state)

    deformable = None
    if deformable_vae_ckpt is not None:
        deformable = convert_deformable_vae(deformable_vae_ckpt, vae_config or VAE_CONFIG)

    root = out_dir / layout.CONTROLCOLOR_DIR
    root.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, writer) -> None:
        dest = root / name
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            writer(Path(tmp) / name)
            if dest.exists():
                if not overwrite:
                    raise ConversionError(f"{dest} exists (overwrite=False)")
                shutil.rmtree(dest)
            (Path(tmp) / name).rename(dest)
        written.append(str(dest))

    for name in ("unet", "controlnet", "vae", "text_encoder", "image_encoder"):
        if name in models:
            save(name, models[name].save_pretrained)
    save("tokenizer", tokenizer.save_pretrained)
    save("scheduler", DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained)
    if deformable is not None:
        save(layout.DEFORMABLE_VAE, deformable.save_pretrained)
    (root / "conversion.json").write_text(json.dumps({
        "source": str(main_ckpt), "deformable_vae": str(deformable_vae_ckpt) if deformable_vae_ckpt else None,
        "clip_dir": str(clip_dir), "dropped_keys": len(_dropped), "components": [Path(w).name for w in written],
        "licence": "Control Color weights: S-Lab License 1.0 (non-commercial use only)",
    }, indent=2))
    return written


def convert_deformable_vae(path: Path, vae_config: dict | None = None) -> ContentGuidedVAE:
    """The official deformable VAE checkpoint -> ContentGuidedVAE, strictly."""
    sd = load_checkpoint(path)
    dcn, dcn_original, vae_part, unknown = {}, {}, {}, []
    for key, value in sd.items():
        if key.startswith("loss.") or key in SCHEDULE_BUFFERS:
            continue  # the LPIPS + discriminator training loss
        for ours, theirs in DCN_NAMES.items():
            if key.startswith(theirs + "."):
                dcn[ours + key[len(theirs):]] = value
                dcn_original[key] = value
                break
        else:
            if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
                vae_part[key] = value
            else:
                unknown.append(key)
    model = ContentGuidedVAE(vae_config=dict(vae_config or VAE_CONFIG))
    expected = deformable_state_dict_to_original(model)
    problems = [f"unexpected keys: {_name_list(unknown)}"] if unknown else []
    _check_keys("deformable_vae", "", {**vae_part, **dcn_original}, expected, problems)
    if problems:
        raise ConversionError(f"{path}: the checkpoint does not match the deformable VAE layout:\n  " + "\n  ".join(problems))
    state = {"vae." + k: v for k, v in convert_ldm_vae_checkpoint(vae_part, dict(model.vae.config)).items()}
    left = _consumed(vae_part, state)
    if left:
        raise ConversionError(f"deformable_vae: the conversion left keys unused: {_name_list(left)}")
    state.update(dcn)
    _load_strict("deformable_vae", model, state)
    return model
