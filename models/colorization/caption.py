"""BLIP captions for unconditional colorization: the official demo's prompt when none is given.

The official test.py (`process`): `if len(prompt)==0:` it captions the gray input with LAVIS
`load_model_and_preprocess(name="blip_caption", model_type="base_coco")` and, when the caption
contains "a black and white photo of" or "black and white photograph of", cuts it up to the first
"of " (`prompt.replace(prompt[:prompt.find("of")+3], "")`). The caption then becomes the prompt,
joined as `prompt + ', ' + a_prompt`.

Here through transformers' `BlipForConditionalGeneration` (Salesforce/blip-image-captioning-base
is the same BLIP base COCO captioning model) with LAVIS' generation settings: the text prompt
"a picture of " (lavis/configs/models/blip_caption_base_coco.yaml `prompt`), removed from the
output as `caption[len(self.prompt):]`, beam search 3, max_length 30, min_length 10,
repetition_penalty 1.0 (lavis/models/blip_models/blip_caption.py `BlipCaption.generate` defaults).
The processor's 384 px bicubic resize and CLIP normalisation are LAVIS' `blip_image_eval`.

The tiny profile's captioner: BLIP's real architecture (ViT + BERT-style decoder with
cross-attention) at width 32, seeded, with a word-piece tokenizer written out in code.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CAPTION_PROMPT = "a picture of "
GENERATE_KWARGS = dict(num_beams=3, max_length=30, min_length=10, repetition_penalty=1.0, do_sample=False)
_BW_MARKERS = ("a black and white photo of", "black and white photograph of")


def strip_black_and_white(caption: str) -> str:
    """The official rule, character for character (it cuts at the first "of", wherever that is)."""
    if any(m in caption for m in _BW_MARKERS):
        caption = caption.replace(caption[: caption.find("of") + 3], "")
    return caption


def caption_input(l_image: np.ndarray) -> Image.Image:
    """What the official demo captions: its `input_image` at the input's resolution, the L channel
    replicated to RGB (`merge([L, L, L])`; an HxW L is replicated here, an HxWx3 taken as is)."""
    return Image.fromarray(l_image if l_image.ndim == 3 else np.repeat(l_image[:, :, None], 3, axis=2))


@torch.no_grad()
def caption_images(model, processor, images: list[Image.Image]) -> list[str]:
    """One caption per image, generated as one batch (the prompt is the same for all, so no
    padding enters the decoder)."""
    if not images:
        return []
    inputs = processor(images=images, text=[CAPTION_PROMPT] * len(images), return_tensors="pt")
    device = model.device
    pixel_values = inputs["pixel_values"].to(device=device, dtype=model.dtype)
    ids = model.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"].to(device), **GENERATE_KWARGS)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    return [strip_black_and_white(t[len(CAPTION_PROMPT):]).strip() for t in texts]


# ---------------------------------------------------------------- tiny profile

TINY_WORDS = (
    "a picture of black and white photo photograph old man woman boy girl child people dog cat horse bird "
    "car street road house building tree trees grass field sky water beach mountain table chair room "
    "sitting standing walking riding on in with near next to the front an is are two three"
).split()
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def tiny_tokenizer():
    """BERT word-piece tokenizer (lower case) over the special tokens, [DEC] (BLIP's decoder
    start token), a few caption words and the letters as word pieces, so every lower-case word
    tokenizes and decodes back."""
    from transformers import BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = [*_SPECIAL, *dict.fromkeys([*TINY_WORDS, *letters]), *(f"##{c}" for c in letters)]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, model_max_length=512,
                         bos_token="[DEC]")


def tiny_captioner(seed: int = 6, image_size: int = 32):
    """(BlipForConditionalGeneration, BlipProcessor) of BLIP's architecture at width 32. The
    output bias of the special tokens other than [SEP] is pushed down so the random decoder
    writes words (decoding skips special tokens: otherwise most tiny captions would be empty)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(list(_SPECIAL))
    pad, sep, dec = ids[0], ids[3], ids[5]
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, projection_dim=32),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         projection_dim=32, bos_token_id=dec, pad_token_id=pad, sep_token_id=sep, eos_token_id=sep),
        projection_dim=32, image_text_hidden_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.bias
        bias[[i for i in ids if i != sep]] = -1e4
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    return model, processor
