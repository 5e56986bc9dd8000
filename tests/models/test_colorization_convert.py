"""The Control Color checkpoint converter: a synthetic checkpoint in the official key layout
(written from tiny diffusers modules through the inverse mapping, saved Lightning-style with
optimizer state, loss keys and schedule buffers) converts, loads strictly and reproduces the
source modules; broken checkpoints are refused by key name before anything is written."""

from __future__ import annotations

import copy
import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from PIL import Image
from transformers import CLIPTextModel, CLIPVisionModel

from models.colorization import tiny
from models.colorization.convert import (
    CONTROLNET_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    ContentGuidedVAE,
    ConversionError,
    convert_ctrlcolor,
    deformable_state_dict_to_original,
    export_original_checkpoint,
    unet_state_dict_to_original,
    vae_state_dict_to_original,
)
from models.colorization.pipeline import ControlColorPipeline
from models.colorization.weights_layout import CAPTION_REQUIRED
from models.profiles import MODEL_DIR_ENV, load_colorization, missing_weights
from tests.models.caption_dir import write_tiny_captioner


@pytest.fixture(autouse=True)
def no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


# Tiny configs with SD-1.5's structure where it matters for the key layout: three levels,
# two layers per block, attention in all but the last down level, upsamplers after both
# attention and non-attention up levels, a 4-stage hint embedding.
UNET = dict(sample_size=8, in_channels=9, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=tiny.TEXT_DIM,
            attention_head_dim=8, norm_num_groups=8)
CONTROLNET = dict(in_channels=4, conditioning_channels=3, down_block_types=UNET["down_block_types"],
                  block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=tiny.TEXT_DIM,
                  attention_head_dim=8, norm_num_groups=8, conditioning_embedding_out_channels=(8, 8, 16, 16))
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
           latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
CONFIGS = dict(unet_config=UNET, controlnet_config=CONTROLNET, vae_config=VAE)


@pytest.fixture(scope="module")
def source():
    """Seeded tiny modules in the converter's layout (plus exemplar encoder and deformable VAE)."""
    torch.manual_seed(0)
    unet, controlnet, vae = UNet2DConditionModel(**UNET), ControlNetModel(**CONTROLNET), AutoencoderKL(**VAE)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out]:
        conv.reset_parameters()  # non-zero, so the ControlNet path is compared too
    tok = tiny.tiny_tokenizer()
    deformable = ContentGuidedVAE.from_vae(vae)
    for dcn in (deformable.dcn_in, *deformable.dcn_mid):
        torch.nn.init.normal_(dcn.conv_offset.weight, std=0.05)
    return dict(unet=unet.eval(), controlnet=controlnet.eval(), vae=vae.eval(), tokenizer=tok,
                text_encoder=tiny.tiny_text_encoder(tok), image_encoder=tiny.tiny_image_encoder(),
                deformable=deformable.eval())


def lightning(state_dict: dict) -> dict:
    """A PyTorch Lightning checkpoint around `state_dict`, with what training leaves in it."""
    sd = dict(state_dict)
    sd.update({"betas": torch.linspace(1e-4, 2e-2, 1000), "alphas_cumprod": torch.rand(1000),
               "alphas_cumprod_prev": torch.rand(1000), "posterior_mean_coef1": torch.rand(1000),
               "logvar": torch.zeros(1000), "loss.logvar": torch.zeros(()),
               "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)})
    return {"state_dict": sd, "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.5.0",
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(4)}},
                                  "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]}],
            "lr_schedulers": []}


@pytest.fixture(scope="module")
def files(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("ctrlcolor")
    main = export_original_checkpoint(source["unet"], source["controlnet"], source["vae"], source["text_encoder"],
                                      source["image_encoder"])
    # transformers 4.x saved CLIP's position_ids buffer; the converter tolerates it
    main["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(lightning(main), root / "main_model.ckpt")
    torch.save(lightning(deformable_state_dict_to_original(source["deformable"])), root / "deformable_vae.ckpt")
    clip = root / "clip-vit-large-patch14"
    source["text_encoder"].config.save_pretrained(clip)
    source["tokenizer"].save_pretrained(clip)
    return dict(root=root, main=root / "main_model.ckpt", deformable=root / "deformable_vae.ckpt", clip=clip,
                state_dict=main)


@pytest.fixture(scope="module")
def converted(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    written = convert_ctrlcolor(files["main"], out, files["deformable"], clip_dir=files["clip"],
                                clip_vision_config=tiny.tiny_image_encoder().config.to_dict(), **CONFIGS)
    write_tiny_captioner(out)  # what `models fetch` downloads next to the converted folders
    return out, written


def test_official_layout_names(files):
    keys = files["state_dict"].keys()
    for k in ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.3.0.op.weight",
              "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
              "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.output_blocks.2.1.conv.weight",
              "model.diffusion_model.output_blocks.5.2.conv.weight", "model.diffusion_model.out.2.bias",
              "control_model.input_hint_block.14.weight", "control_model.zero_convs.8.0.bias",
              "control_model.middle_block_out.0.weight", "first_stage_model.decoder.up.3.block.2.conv1.weight",
              "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.norm_out.bias",
              "cond_stage_model.transformer.text_model.final_layer_norm.weight",
              "cond_stage_model.ImageEmbedder.model.vision_model.post_layernorm.weight"]:
        assert k in keys, k
    assert files["state_dict"]["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in ldm


def test_round_trip_is_exact(files, converted, source):
    out, written = converted
    root = out / "controlcolor"
    assert [Path(w).name for w in written] == ["unet", "controlnet", "vae", "text_encoder", "image_encoder",
                                               "tokenizer", "scheduler", "deformable_vae"]
    # with the BLIP captioner (a separate download, written by the fixture) nothing is missing
    assert missing_weights("colorize", out) == []
    assert not any(CAPTION_REQUIRED[0][0].split("/")[0] in str(w) for w in written)
    for name, cls in (("unet", UNet2DConditionModel), ("controlnet", ControlNetModel), ("vae", AutoencoderKL)):
        a, b = source[name].state_dict(), cls.from_pretrained(root / name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for name, cls in (("text_encoder", CLIPTextModel), ("image_encoder", CLIPVisionModel)):
        a, b = source[name].state_dict(), cls.from_pretrained(root / name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    d = ContentGuidedVAE.from_pretrained(root / "deformable_vae")
    a, b = source["deformable"].state_dict(), d.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((root / "conversion.json").read_text())
    assert info["dropped_keys"] == 7 and "S-Lab" in info["licence"]


def test_converted_models_compute_what_the_sources_compute(converted, source):
    root = converted[0] / "controlcolor"
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, tiny.TEXT_DIM, generator=g)
    hint, extra = torch.rand(2, 3, 64, 64, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    t = torch.tensor(400)
    cn = ControlNetModel.from_pretrained(root / "controlnet")
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    with torch.no_grad():
        for net, ref in ((cn, source["controlnet"]),):
            a = net(x, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
            b = ref(x, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
            assert all(torch.equal(u, v) for u, v in zip([*a[0], a[1]], [*b[0], b[1]]))
        down, mid = cn(x, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
        sample = torch.cat([x, extra], 1)
        kw = dict(encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        assert torch.equal(unet(sample, t, **kw).sample, source["unet"](sample, t, **kw).sample)
        img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        vae = AutoencoderKL.from_pretrained(root / "vae")
        assert torch.equal(vae.encode(img).latent_dist.mean, source["vae"].encode(img).latent_dist.mean)
        d = ContentGuidedVAE.from_pretrained(root / "deformable_vae")
        z, gz = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        assert torch.equal(d.decode(z, gz), source["deformable"].decode(z, gz))


def test_converted_folder_runs_as_the_pretrained_profile(converted, source):
    out = converted[0]
    pre = load_colorization("pretrained", out, short_side=64, max_long_side=192)
    assert pre.supports_exemplar and pre.supports_deformable_decoder and not pre.supports_autoguidance
    ref = ControlColorPipeline(vae=source["vae"], text_encoder=source["text_encoder"], tokenizer=source["tokenizer"],
                               unet=source["unet"], controlnet=source["controlnet"], scheduler=tiny.tiny_scheduler(),
                               image_encoder=source["image_encoder"], deformable_vae=source["deformable"],
                               short_side=64, max_long_side=192)
    photo = Image.fromarray(skimage.data.astronaut()).resize((70, 45), Image.LANCZOS)
    for p in (pre, ref):
        p.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, exemplar=photo, deformable_decoder=True, prompt="a red car",
              strokes=[{"color": "#ff0000", "width": 5, "points": [[5, 5], [30, 20]]}])
    a = pre(photo, generator=torch.Generator().manual_seed(9), **kw).images[0]
    b = ref(photo, generator=torch.Generator().manual_seed(9), **kw).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _broken(files, tmp_path, edit) -> Path:
    ckpt = torch.load(files["main"], weights_only=True)
    edit(ckpt["state_dict"])
    path = tmp_path / "broken.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("model.diffusion_model.input_blocks.1.0.in_layers.0.weight"),
         r"unet: missing keys model\.diffusion_model\.input_blocks\.1\.0\.in_layers\.0\.weight"),
        (lambda sd: sd.pop("control_model.zero_convs.3.0.bias"), r"controlnet: missing keys control_model\.zero_convs\.3\.0\.bias"),
        (lambda sd: sd.pop("first_stage_model.decoder.up.0.block.2.norm2.weight"),
         r"vae: missing keys first_stage_model\.decoder\.up\.0\.block\.2\.norm2\.weight"),
        (lambda sd: sd.pop("cond_stage_model.transformer.text_model.final_layer_norm.bias"),
         r"text_encoder: missing keys cond_stage_model\.transformer\.text_model\.final_layer_norm\.bias"),
        (lambda sd: sd.__setitem__("model.diffusion_model.input_blocks.99.0.weight", torch.zeros(1)),
         r"unet: unexpected keys model\.diffusion_model\.input_blocks\.99\.0\.weight"),
        (lambda sd: sd.__setitem__("mystery_model.weight", torch.zeros(1)), r"outside the known parts: mystery_model\.weight"),
        (lambda sd: sd.__setitem__("model.diffusion_model.out.2.bias", torch.zeros(5)),
         r"shape mismatch for model\.diffusion_model\.out\.2\.bias \(5,\) vs \(4,\)"),
    ],
)
def test_broken_checkpoints_are_refused_by_name(files, tmp_path, edit, match):
    path = _broken(files, tmp_path, edit)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=match):
        convert_ctrlcolor(path, out, clip_dir=files["clip"], clip_vision_config=tiny.tiny_image_encoder().config.to_dict(),
                          **CONFIGS)
    assert not (out / "controlcolor").exists()  # nothing written


def test_deformable_checkpoint_missing_key_refused(files, tmp_path):
    ckpt = torch.load(files["deformable"], weights_only=True)
    del ckpt["state_dict"]["decoder.mid.block_2.dcn2.conv_offset.weight"]
    path = tmp_path / "dvae.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ConversionError, match=r"missing keys decoder\.mid\.block_2\.dcn2\.conv_offset\.weight"):
        convert_ctrlcolor(files["main"], tmp_path / "out", path, clip_dir=files["clip"],
                          clip_vision_config=tiny.tiny_image_encoder().config.to_dict(), **CONFIGS)
    assert not (tmp_path / "out" / "controlcolor").exists()


def test_released_layout_without_exemplar_weights(files, tmp_path, source):
    """The released checkpoint has no exemplar embedder: no image_encoder/ is written."""
    path = _broken(files, tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("cond_stage_model.ImageEmbedder.")])
    written = convert_ctrlcolor(path, tmp_path / "out", clip_dir=files["clip"], **CONFIGS)
    write_tiny_captioner(tmp_path / "out")
    assert "image_encoder" not in [Path(w).name for w in written]
    pre = load_colorization("pretrained", tmp_path / "out", short_side=64)
    assert not pre.supports_exemplar and not pre.supports_deformable_decoder
    assert pre.missing_optional["exemplar"] == ["controlcolor/image_encoder/config.json",
                                                "controlcolor/image_encoder/model.safetensors"]


def test_weights_only_and_clip_folder(files, tmp_path):
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hparams": pathlib.PurePosixPath("/x")}, bad)
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert_ctrlcolor(bad, tmp_path / "out", clip_dir=files["clip"], **CONFIGS)
    with pytest.raises(ConversionError, match=r"config\.json not found.*clip-vit-large-patch14"):
        convert_ctrlcolor(files["main"], tmp_path / "out", clip_dir=tmp_path / "nowhere", **CONFIGS)
    with pytest.raises(ConversionError, match="checkpoint not found"):
        convert_ctrlcolor(tmp_path / "missing.ckpt", tmp_path / "out", clip_dir=files["clip"], **CONFIGS)


def test_sd15_layout_on_meta_tensors():
    """The full-size configs: the inverse mapping names the official SD-1.5 / ControlNet keys,
    and diffusers' own conversion maps those names back onto every parameter."""
    with torch.device("meta"):
        unet, cn, vae = (UNet2DConditionModel(**UNET_CONFIG), ControlNetModel(**CONTROLNET_CONFIG),
                         AutoencoderKL(**VAE_CONFIG))
    ou, oc, ov = unet_state_dict_to_original(unet), unet_state_dict_to_original(cn), vae_state_dict_to_original(vae)
    assert (len(ou), len(ov)) == (686, 248)  # SD-1.5's UNet and VAE key counts
    for k in ["input_blocks.11.0.out_layers.3.weight", "input_blocks.9.0.op.weight", "output_blocks.2.1.conv.weight",
              "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight", "input_blocks.4.0.skip_connection.weight",
              "middle_block.2.emb_layers.1.weight"]:
        assert k in ou, k
    for k in ["zero_convs.11.0.weight", "input_hint_block.14.weight", "input_hint_block.12.bias", "middle_block_out.0.bias"]:
        assert k in oc, k
    assert "decoder.up.0.block.0.nin_shortcut.weight" in ov and "encoder.down.2.downsample.conv.weight" in ov
    assert ou["input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ou.items()}, dict(unet.config))
    assert back.keys() == unet.state_dict().keys()
    back = convert_controlnet_checkpoint({"control_model." + k: v for k, v in oc.items()}, dict(cn.config))
    assert back.keys() == cn.state_dict().keys()
    back = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in ov.items()}, dict(vae.config))
    assert back.keys() == vae.state_dict().keys()
    assert all(back[k].shape == v.shape for k, v in vae.state_dict().items())


def test_export_inverse_is_key_exact_for_the_tiny_profile():
    """The pipeline's own tiny modules (two levels) survive the round trip too."""
    c = tiny.tiny_components(optional=False)
    sd = export_original_checkpoint(c["unet"], c["controlnet"], c["vae"], c["text_encoder"])
    unet = convert_ldm_unet_checkpoint({k: v for k, v in sd.items() if k.startswith("model.")}, dict(c["unet"].config))
    assert all(torch.equal(unet[k], v) for k, v in c["unet"].state_dict().items())
    copy.deepcopy(c["unet"]).load_state_dict(unet, strict=True)
