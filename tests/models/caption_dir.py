"""Writes the tiny BLIP captioner in the file layout of Salesforce/blip-image-captioning-base,
where the pretrained colorize profile reads it (and where `models fetch --kind colorize` puts
the real one): config.json, model.safetensors, preprocessor_config.json, tokenizer.json,
tokenizer_config.json, special_tokens_map.json, vocab.txt."""
from __future__ import annotations

import json
from pathlib import Path

from models.colorization.caption import tiny_captioner
from models.colorization.weights_layout import CAPTION_DIR


def write_tiny_captioner(model_dir: Path, seed: int = 6, decoys: bool = False) -> Path:
    """`{model_dir}/blip-image-captioning-base/` holding the tiny profile's captioner (seed 6 is
    the one `tiny_components(seed=0)` builds). `decoys`: also the repository's other weight
    formats (pytorch_model.bin, tf_model.h5), which a fetch must not download."""
    model, processor = tiny_captioner(seed)
    out = Path(model_dir) / CAPTION_DIR
    model.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)  # the Hub repository has none
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json
    tok = processor.tokenizer
    tok.save_pretrained(out)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: getattr(tok, k) for k in ("bos_token", "cls_token", "mask_token", "pad_token", "sep_token", "unk_token")}))
    if decoys:
        (out / "pytorch_model.bin").write_bytes(b"not for download")
        (out / "tf_model.h5").write_bytes(b"not for download")
    return out
