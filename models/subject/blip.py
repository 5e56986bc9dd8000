"""BLIP-Diffusion's two multimodal modules with forwards that hold on current transformers.

diffusers ships the released architecture (`Blip2QFormerModel`, `ContextCLIPTextModel`, under
`diffusers.pipelines.deprecated.blip_diffusion`), and `from_pretrained` of the released folders
works with it. Their forwards were written against transformers 4.x and break on 5.x: the
Q-Former calls `invert_attention_mask` (gone) and passes `head_mask` where transformers' attention
now takes `encoder_hidden_states`; the context text model passes `causal_attention_mask`, which
the 5.x CLIP encoder silently ignores, so the text tower would run without its causal mask. The
subclasses here keep every parameter (names, shapes, configs: the checkpoints load unchanged)
and re-implement only `forward`, with the official computation (LAVIS `blip_diffusion.py`,
`Blip2Qformer.extract_features(mode="multimodal")` + `proj_layer`; `CtxCLIPTextModel`), calling
sub-modules by keyword so the same code runs on transformers 4.x and 5.x.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.deprecated.blip_diffusion import Blip2QFormerModel, ContextCLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


def _first(out):
    """transformers 4.x sub-modules return tuples, 5.x tensors or ModelOutputs."""
    if isinstance(out, torch.Tensor):
        return out
    return out[0]


class SubjectQFormer(Blip2QFormerModel):
    """BLIP-2 Q-Former + BLIP-Diffusion's projection: (images, subject class) -> subject
    embedding (B, num_query_tokens, hidden), in the text encoder's token-embedding space."""

    def __init__(self, config):
        super().__init__(config)
        self._set_attention_implementation()

    def _set_attention_implementation(self):
        # transformers 5 dispatches attention by each sub-config's implementation; the query
        # transformer's is left unset when the model is built from a composite Blip2Config
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        for sub in (self.config.qformer_config, self.config.vision_config):
            if getattr(sub, "_attn_implementation", None) is None:
                sub._attn_implementation = impl

    @classmethod
    def adopt(cls, module: Blip2QFormerModel) -> "SubjectQFormer":
        """Use a diffusers `Blip2QFormerModel` as is (same parameters, this forward)."""
        if not isinstance(module, cls):
            module.__class__ = cls
            module._set_attention_implementation()
        return module

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen image encoder's tokens after `ln_vision` (diffusers: post_layernorm)."""
        ve = self.visual_encoder
        h = ve.embeddings(pixel_values.to(self.dtype))
        h = ve.pre_layernorm(h)
        h = _first(ve.encoder(inputs_embeds=h))
        return ve.post_layernorm(h)

    def forward(self, pixel_values: torch.Tensor, text: list[str]) -> torch.Tensor:  # type: ignore[override]
        """Multimodal features of the learned queries, conditioned on the image (cross-attention,
        every layer in BLIP-Diffusion) and on the subject text (self-attention over queries +
        text tokens, padding masked), projected by `proj_layer`. One text per image."""
        if len(text) != pixel_values.shape[0]:
            raise ValueError(f"one subject text per image: {len(text)} texts for {pixel_values.shape[0]} images")
        device = pixel_values.device
        tokens = self.tokenizer(list(text), return_tensors="pt", padding=True).to(device)
        nq = self.num_query_tokens
        h = self.embeddings(input_ids=tokens.input_ids, query_embeds=self.query_tokens)
        mask = torch.cat([torch.ones(h.shape[0], nq, dtype=tokens.attention_mask.dtype, device=device),
                          tokens.attention_mask], dim=1)
        # BERT's additive mask (-10000 on padding), broadcast over heads and query positions
        ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * -10000.0
        image = self.image_features(pixel_values)
        for layer in self.encoder.layer:
            attn = _first(layer.attention(h, attention_mask=ext))
            queries = attn[:, :nq]
            if layer.has_cross_attention:
                queries = _first(layer.crossattention(queries, encoder_hidden_states=image))
            out = layer.feed_forward_chunk_query(queries)  # queries and text have separate FFNs
            if attn.shape[1] > nq:
                out = torch.cat([out, layer.feed_forward_chunk(attn[:, nq:])], dim=1)
            h = out
        return self.proj_layer(h[:, :nq])


class SubjectTextEncoder(ContextCLIPTextModel):
    """CLIP text tower that splices context embeddings into the token embeddings at
    `ctx_begin_pos` (before position embeddings are added), with CLIP's causal mask over the
    whole spliced sequence, as `CtxCLIPTextModel` does."""

    @classmethod
    def adopt(cls, module: ContextCLIPTextModel) -> "SubjectTextEncoder":
        if not isinstance(module, cls):
            module.__class__ = cls
        return module

    def forward(self, input_ids: torch.Tensor, ctx_embeddings: torch.Tensor | None = None,  # type: ignore[override]
                ctx_begin_pos: list[int] | None = None, **_) -> BaseModelOutputWithPooling:
        tm = self.text_model
        if ctx_embeddings is not None:
            ctx_embeddings = ctx_embeddings.to(tm.embeddings.token_embedding.weight.dtype)
            if ctx_begin_pos is None or len(ctx_begin_pos) != input_ids.shape[0]:
                raise ValueError("ctx_begin_pos needs one position per sequence")
        h = tm.embeddings(input_ids=input_ids, ctx_embeddings=ctx_embeddings, ctx_begin_pos=ctx_begin_pos)
        n = h.shape[1]
        if n > tm.config.max_position_embeddings:
            raise ValueError(f"{n} tokens (text + context) exceed the {tm.config.max_position_embeddings} positions")
        causal = torch.full((n, n), torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device).triu(1)
        h = _first(tm.encoder(inputs_embeds=h, attention_mask=causal[None, None].expand(h.shape[0], 1, n, n)))
        h = tm.final_layer_norm(h)
        # pooled: the EOS token (the highest id), shifted past the spliced context
        eos = input_ids.to(torch.int).argmax(dim=-1)
        if ctx_embeddings is not None:
            eos = eos + ctx_embeddings.shape[1]
        pooled = h[torch.arange(h.shape[0], device=h.device), eos]
        return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=pooled)
