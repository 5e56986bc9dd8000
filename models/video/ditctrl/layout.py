"""DiTCtrl multi-prompt layout: segments, frame counts, blend weights, transition embeddings.

Pure tensor arithmetic, no model code, so every formula is testable against a hand computation.

    segment   13 latent frames (49 pixel frames: the CogVideoX VAE compresses time 4x)
    overlap   latent frames shared by adjacent segments (paper 6, official repo now 9)
    T         transition segments between consecutive prompts (paper 1, repo 2), prompt
              embedding (1 - w) c_i + w c_{i+1}, w = (j + 1) / (T + 1), j = 0..T-1
    S         N + (N - 1) T segments for N prompts
    L         13 + (S - 1)(13 - overlap) latent frames;  pixel frames 4 (L - 1) + 1
              (odd L; an even L decodes L - 1 latent frames, as the official decode loop)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SEGMENT_FRAMES = 13  # latent frames per segment: CogVideoX's 49-frame clip
TEMPORAL_COMPRESSION = 4  # CogVideoX VAE: 4 pixel frames per latent frame (plus the first)


def blend_weights(segment_frames: int = SEGMENT_FRAMES, device=None, dtype=torch.float32) -> torch.Tensor:
    """Triangle weights w[f] = min((2f + 1) / n, 2 - (2f + 1) / n), f = 0..n-1: for n = 13
    [1, 3, 5, 7, 9, 11, 13, 11, 9, 7, 5, 3, 1] / 13 (the official sampler's weight)."""
    w = (torch.arange(segment_frames, device=device, dtype=torch.float64) * 2 + 1) / segment_frames
    return torch.minimum(w, 2 - w).to(dtype)


def num_segments(num_prompts: int, transition_segments: int) -> int:
    """S = N + (N - 1) T."""
    return num_prompts + (num_prompts - 1) * transition_segments


def latent_frame_count(segments: int, overlap: int, segment_frames: int = SEGMENT_FRAMES) -> int:
    """L = 13 + (S - 1)(13 - overlap)."""
    return segment_frames + (segments - 1) * (segment_frames - overlap)


def decoded_latent_frames(latent_frames: int) -> int:
    """Latent frames that get decoded. The CogVideoX VAE decodes 1 + 2k latent frames (a first
    chunk of 3, then pairs, each pair's time axis upsampled 4x) to 4 (L - 1) + 1 pixel frames;
    for an even L the official decode loop (`range((L - 1) // 2)`: chunks [0:3], [3:5], ...)
    stops before the last latent frame, and so do we. Every paper/repo setting (overlap 6 with
    an odd segment count, overlap 9) has an odd L; e.g. 1 prompt x 2 segments at overlap 6
    has L = 20 and decodes 19."""
    return latent_frames if latent_frames % 2 else latent_frames - 1


def pixel_frame_count(latent_frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """Pixel frames of L latent frames: 4 (L - 1) + 1 for odd L (see `decoded_latent_frames`)."""
    return temporal_compression * (decoded_latent_frames(latent_frames) - 1) + 1


def frame_count(num_prompts: int, overlap: int = 6, transition_segments: int = 1, segments: int | None = None) -> int:
    """Pixel frames of a DiTCtrl video: (2, 6, 1) -> 105, (3, 6, 1) -> 161, (2, 9, 2) -> 97, (3, 9, 2) -> 145."""
    s = segments if segments is not None else num_segments(num_prompts, transition_segments)
    return pixel_frame_count(latent_frame_count(s, overlap))


def segment_starts(segments: int, overlap: int, segment_frames: int = SEGMENT_FRAMES) -> list[int]:
    """First latent frame of each segment (stride 13 - overlap)."""
    return [k * (segment_frames - overlap) for k in range(segments)]


def transition_weights(transition_segments: int) -> list[float]:
    """w_j = (j + 1) / (T + 1): the share of the *next* prompt in transition segment j."""
    return [(j + 1) / (transition_segments + 1) for j in range(transition_segments)]


def interpolate_embeddings(c_from: torch.Tensor, c_to: torch.Tensor, transition_segments: int) -> list[torch.Tensor]:
    """The T transition prompt embeddings between two prompts: (1 - w) c_from + w c_to."""
    if c_from.shape != c_to.shape:
        raise ValueError(f"prompt embeddings differ in shape: {tuple(c_from.shape)} vs {tuple(c_to.shape)}")
    return [(1 - w) * c_from + w * c_to for w in transition_weights(transition_segments)]


@dataclass(frozen=True)
class Segment:
    """One 13-frame window of the long latent and the prompt mix that conditions it:
    embedding = (1 - weight) c[prompt] + weight c[next_prompt]."""

    index: int
    start: int  # first latent frame
    prompt: int
    next_prompt: int
    weight: float  # 0 for a prompt's own segment

    @property
    def is_transition(self) -> bool:
        return self.weight != 0.0


@dataclass(frozen=True)
class Layout:
    segments: tuple[Segment, ...]
    overlap: int
    latent_frames: int
    segment_frames: int = SEGMENT_FRAMES

    @property
    def pixel_frames(self) -> int:
        return pixel_frame_count(self.latent_frames)

    @property
    def pairs(self) -> list[tuple[int, ...]]:
        """The transformer calls of one denoising step: each adjacent pair (k, k+1); a lone
        segment (one prompt, one segment) is a single call on its own."""
        if len(self.segments) == 1:
            return [(0,)]
        return [(k, k + 1) for k in range(len(self.segments) - 1)]


def plan(num_prompts: int, overlap: int = 6, transition_segments: int = 1, segments: int | None = None,
         segment_frames: int = SEGMENT_FRAMES) -> Layout:
    """The segment layout for N prompts. `segments` is for a single prompt (a long video of the
    same prompt); with several prompts S is fixed by N and T and `segments` must be None or S."""
    if num_prompts < 1:
        raise ValueError("at least one prompt is needed")
    if not 0 <= overlap < segment_frames:
        raise ValueError(f"`overlap` has to be in [0, {segment_frames - 1}] latent frames, got {overlap}")
    if transition_segments < 0:
        raise ValueError(f"`transition_segments` has to be >= 0, got {transition_segments}")
    if num_prompts == 1:
        count = 1 if segments is None else segments
        if count < 1:
            raise ValueError(f"`segments` has to be >= 1, got {segments}")
        segs = [Segment(k, 0, 0, 0, 0.0) for k in range(count)]
    else:
        expected = num_segments(num_prompts, transition_segments)
        if segments is not None and segments != expected:
            raise ValueError(f"{num_prompts} prompts with {transition_segments} transition segments make "
                             f"{expected} segments; `segments` ({segments}) is only for a single prompt")
        segs = []
        for i in range(num_prompts):
            segs.append(Segment(len(segs), 0, i, i, 0.0))
            if i < num_prompts - 1:
                segs += [Segment(len(segs), 0, i, i + 1, w) for w in transition_weights(transition_segments)]
    starts = segment_starts(len(segs), overlap, segment_frames)
    segs = [Segment(s.index, start, s.prompt, s.next_prompt, s.weight) for s, start in zip(segs, starts)]
    return Layout(tuple(segs), overlap, latent_frame_count(len(segs), overlap, segment_frames), segment_frames)


def segment_embeddings(layout: Layout, prompt_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-segment prompt embedding: the prompt's own for a prompt segment, the interpolation
    (1 - w) c_i + w c_{i+1} for a transition segment (w = (j + 1) / (T + 1))."""
    out = []
    for s in layout.segments:
        c, c_next = prompt_embeds[s.prompt], prompt_embeds[s.next_prompt]
        out.append(c if not s.is_transition else (1 - s.weight) * c + s.weight * c_next)
    return out


class Blender:
    """Accumulates per-segment predictions into the long latent with the triangle weights and
    divides by the accumulated weight per frame (the official multi-prompt sampler's step).

    Predictions are (B, 13, C, H, W) segment tensors (frames on dim 1, diffusers' layout)."""

    def __init__(self, layout: Layout, like: torch.Tensor):
        self.layout = layout
        self.acc = torch.zeros_like(like, dtype=torch.float32)
        self.weight_sum = torch.zeros(like.shape[1], device=like.device, dtype=torch.float32)
        self.w = blend_weights(layout.segment_frames, device=like.device)

    def add(self, segment: int, prediction: torch.Tensor) -> None:
        start = self.layout.segments[segment].start
        sl = slice(start, start + self.layout.segment_frames)
        self.acc[:, sl] += prediction.float() * self.w.view(1, -1, 1, 1, 1)
        self.weight_sum[sl] += self.w

    def result(self) -> torch.Tensor:
        if bool((self.weight_sum <= 0).any()):
            raise RuntimeError("some latent frames got no prediction: the layout does not cover the latent")
        return self.acc / self.weight_sum.view(1, -1, 1, 1, 1)


def blend(layout: Layout, predictions: list[tuple[int, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """Blend (segment index, prediction) pairs, in call order, into a tensor shaped like `like`."""
    b = Blender(layout, like)
    for k, pred in predictions:
        b.add(k, pred)
    return b.result()


def scale_window(window: tuple[int, int], reference_total: int | None, total: int) -> tuple[int, int]:
    """Rescale a half-open [a, b) window given for `reference_total` steps (or layers) to
    `total`: start rounds, end rounds up; a non-empty window stays non-empty. None keeps the
    window as given (absolute), clipped to [0, total]."""
    a, b = window
    if b <= a:
        return (0, 0)
    if reference_total is None:
        return (max(0, min(a, total)), max(0, min(b, total)))
    start = round(a * total / reference_total)
    end = math.ceil(b * total / reference_total - 1e-9)
    end = max(0, min(end, total))
    start = max(0, min(start, end - 1)) if end > 0 else 0
    return (start, end)
