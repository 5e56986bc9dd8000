"""Switches back to the official Control Color behaviour where the project deviates on purpose.

The project's defaults are documented improvements; `Parity.official()` (or `parity="official"`)
reproduces the released code's arithmetic for comparisons with the released model. Each switch
changes only what it names:

    sag_heads     "all": the SAG mask averages all heads of each item of the unconditional pass.
                  "official": heads 0-3 of 8 after `attention_probs.chunk(2)` with 4 heads, as
                  cldm/ddim_haced_sag_step.py (p_sample_ddim, `uncond_attn, cond_attn = ...chunk(2)`;
                  sag_masking, `h = 4`, `attn_map.reshape(b, h, hw1, hw2)`); for several images of
                  one request that mixes items (item k reads item k // 2, heads 4 (k % 2) .. + 3).
    working_size  "aspect": shorter side to the target, aspect kept, long side capped.
                  "official": annotator/util.py `resize_image`: each side rounded to 64 on its own
                  and any side of 800 px or more replaced by 768 (squeezing wide images); Lanczos
                  when the short side grows (k > 1), area otherwise.
    timesteps     "leading": diffusers' DDIM 'leading' spacing + steps_offset 1 (identical to the
                  official schedule whenever the step count divides 1000).
                  "uniform": ldm's `make_ddim_timesteps(..., 'uniform')` (ldm/modules/diffusionmodules/
                  util.py): range(0, 1000, 1000 // S) + 1, so 30 steps run 31 (1, 34, ..., 991).
    gray_input    "lab": every input's L is its Lab L.
                  "official": an input test.py's `is_gray_scale` calls gray (channel-difference
                  variance <= 10) is used as it is: its gray values stand in for L (hint, caption,
                  and channel 0 merged back), which shifts gray levels.
    l_merge       "gamut_fit": out-of-gamut colours lose chroma until the input's L survives the
                  Lab -> RGB conversion (lab.replace_l).
                  "official": the plain OpenCV merge (`cv2.merge([L, a, b])`, COLOR_LAB2RGB), which
                  clips in RGB and so changes L where the output is out of gamut.

Precision is the one official behaviour that is not a per-request switch: the released code runs
fp32 on CUDA, and weights are cast when a worker loads them (VISIONJOBS_COLORIZE_FP32, or
`dtype=torch.float32` to the loader). Standard library only: the API process imports the names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SAG_HEADS = ("all", "official")
WORKING_SIZE = ("aspect", "official")
TIMESTEPS = ("leading", "uniform")
GRAY_INPUT = ("lab", "official")
L_MERGE = ("gamut_fit", "official")
PRESETS = ("project", "official")
_CHOICES = {"sag_heads": SAG_HEADS, "working_size": WORKING_SIZE, "timesteps": TIMESTEPS, "gray_input": GRAY_INPUT,
            "l_merge": L_MERGE}


@dataclass(frozen=True)
class Parity:
    sag_heads: str = "all"
    working_size: str = "aspect"
    timesteps: str = "leading"
    gray_input: str = "lab"
    l_merge: str = "gamut_fit"

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"`parity.{name}` has to be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    @classmethod
    def official(cls) -> "Parity":
        return cls(sag_heads="official", working_size="official", timesteps="uniform", gray_input="official",
                   l_merge="official")

    @classmethod
    def parse(cls, value: "Parity | dict | str | None") -> "Parity":
        """None or "project" -> the project's defaults; "official" -> every official switch;
        a dict of switches (missing ones: the project's); a Parity as is."""
        if value is None or value == "project":
            return cls()
        if value == "official":
            return cls.official()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"`parity` accepts {', '.join(_CHOICES)}, got unknown {', '.join(sorted(unknown))}")
            return cls(**{k: v for k, v in value.items() if v is not None})
        raise ValueError(f"`parity` has to be 'project', 'official', a dict of switches or a Parity, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def uniform_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """ldm's DDIM 'uniform' discretisation, descending: c = T // S, range(0, T, c) + 1."""
    c = num_train_timesteps // num_inference_steps
    return [t + 1 for t in range(0, num_train_timesteps, c)][::-1]
