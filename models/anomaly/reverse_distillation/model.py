"""Reverse Distillation: its configuration, the network (frozen teacher + trainable OCBE and
decoder) and the fitted model that scores images like PatchCore does."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..backbone import ARCHITECTURES, ResNet
from ..postprocess import NormalizationStats, Thresholds
from ..scoring import AnomalyScorer
from .components import build_student, init_weights
from .loss import LOSS_MODES, MAP_MODES, anomaly_map, distillation_loss

__all__ = ["LAYERS", "ReverseDistillationConfig", "ReverseDistillationModel", "ReverseDistillationNet"]

LAYERS = ("layer1", "layer2", "layer3")
#: fields that must match to resume a checkpoint (the rest, e.g. max_epochs, may change)
RESUME_FIELDS = ("backbone", "backbone_width", "image_size", "ocbe_width_per_group", "loss", "batch_size",
                 "learning_rate", "betas", "seed")


@dataclass
class ReverseDistillationConfig:
    """Everything that defines a trained model and its training (stored in the artifact)."""

    backbone: str = "wide_resnet50_2"  # the teacher; tiny for the tiny profile
    backbone_width: int | None = None  # base width override (tiny: 16)
    image_size: int = 256  # images are resized to image_size x image_size (a multiple of 32, >= 64)
    #: OCBE block width per group: None = 64 (anomalib); 128 = RD4AD's code for wide_resnet50_2
    ocbe_width_per_group: int | None = None
    loss: str = "per_location"  # per_location (paper eq. 2) | flattened (RD4AD code, anomalib)
    anomaly_map_mode: str = "add"  # add (paper, anomalib's model default) | multiply
    blur_sigma: float = 4.0
    # training (the paper: Adam, lr 0.005, betas (0.5, 0.999), batch 16, 200 epochs)
    max_epochs: int = 200
    patience: int = 3  # epochs without improvement before stopping (anomalib's example); 0 = never stop early
    batch_size: int = 16
    learning_rate: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)  # anomalib uses (0.5, 0.99)
    # thresholds (as PatchCoreConfig)
    threshold_quantile: float = 0.99
    min_box_area: int = 16
    seed: int = 0

    def validate(self) -> "ReverseDistillationConfig":
        if self.backbone not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {self.backbone!r}")
        # a multiple of 32: the student upsamples a stride-32 map; at least 64, so that the
        # OCBE's BatchNorm sees more than one value per channel even in a batch of one image
        if not 64 <= int(self.image_size) <= 2048 or int(self.image_size) % 32:
            raise ValueError(f"image_size must be a multiple of 32 between 64 and 2048, got {self.image_size}")
        if self.loss not in LOSS_MODES:
            raise ValueError(f"loss must be one of {LOSS_MODES}, got {self.loss!r}")
        if self.anomaly_map_mode not in MAP_MODES:
            raise ValueError(f"anomaly_map_mode must be one of {MAP_MODES}, got {self.anomaly_map_mode!r}")
        if float(self.blur_sigma) < 0:
            raise ValueError("blur_sigma must be >= 0")
        if not 1 <= int(self.max_epochs) <= 10000:
            raise ValueError(f"max_epochs must be between 1 and 10000, got {self.max_epochs}")
        if int(self.patience) < 0:
            raise ValueError(f"patience must be >= 0 (0 turns early stopping off), got {self.patience}")
        if not 1 <= int(self.batch_size) <= 1024:
            raise ValueError(f"batch_size must be between 1 and 1024, got {self.batch_size}")
        if not 0.0 < float(self.learning_rate) <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if len(self.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 < float(self.threshold_quantile) <= 1.0:
            raise ValueError("threshold_quantile must be in (0, 1]")
        if int(self.min_box_area) < 1:
            raise ValueError("min_box_area must be >= 1")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ReverseDistillationConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


class ReverseDistillationNet(nn.Module):
    """Teacher E (frozen, always in eval mode: its BatchNorm statistics never move), OCBE and
    student decoder D. ``forward`` returns the teacher's and the student's three maps."""

    def __init__(self, teacher: ResNet, config: ReverseDistillationConfig) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.bottleneck, self.decoder = build_student(teacher, config.ocbe_width_per_group)
        g = torch.Generator(device="cpu").manual_seed(int(config.seed))
        init_weights(self.bottleneck, g)
        init_weights(self.decoder, g)
        device = next(teacher.parameters()).device
        self.bottleneck.to(device)
        self.decoder.to(device)
        self.loss_mode = config.loss
        self.map_mode = config.anomaly_map_mode
        self.blur_sigma = float(config.blur_sigma)

    def train(self, mode: bool = True) -> "ReverseDistillationNet":
        super().train(mode)
        self.teacher.eval()  # anomalib: self.encoder.eval() on every forward
        return self

    def student_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: decoder then OCBE (anomalib's order)."""
        return list(self.decoder.parameters()) + list(self.bottleneck.parameters())

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """OCBE and decoder weights and BatchNorm buffers (``bottleneck.*``, ``decoder.*``)."""
        out = {f"bottleneck.{k}": v for k, v in self.bottleneck.state_dict().items()}
        out.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return out

    def load_student_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict: every OCBE/decoder key present with its shape, nothing else."""
        expected = self.student_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise ValueError(f"student weights do not match this network: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        with torch.no_grad():
            for k, t in expected.items():
                t.copy_(state[k].to(t.dtype))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, 3, S, S) RGB in [0, 1] -> (teacher maps, student maps), layer1..layer3 order."""
        with torch.no_grad():
            teacher = list(self.teacher.extract(images, LAYERS).values())
        student = self.decoder(self.bottleneck(teacher))
        return teacher, student

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        return distillation_loss(*self(images), mode=self.loss_mode)

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S) blurred anomaly maps at the input size."""
        teacher, student = self(images)
        return anomaly_map(teacher, student, tuple(images.shape[-2:]), self.map_mode, self.blur_sigma)


class ReverseDistillationModel(AnomalyScorer):
    """A trained Reverse Distillation model: network + thresholds + normalisation stats.
    Scoring, thresholds and rendering come from :class:`scoring.AnomalyScorer`, so the
    results have PatchCore's shape (:class:`common.ScoreItem`). ``info`` holds the training
    record: split, history, best epoch, validation and test metrics."""

    def __init__(self, config: ReverseDistillationConfig, net: ReverseDistillationNet,
                 thresholds: Thresholds, stats: NormalizationStats, info: dict | None = None) -> None:
        self.config = config
        self.net = net.eval()
        self.thresholds = thresholds
        self.stats = stats
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.decoder.parameters()).device

    @property
    def test_metrics(self) -> dict:
        return dict(self.info.get("test_metrics") or {})

    def to(self, device: str | torch.device) -> "ReverseDistillationModel":
        self.net.to(device)
        return self

    def nbytes(self, include_backbone: bool = True) -> int:
        """Device memory of the student (plus the teacher's weights), for caches."""
        n = sum(t.numel() * t.element_size() for t in self.net.student_state_dict().values())
        if include_backbone:
            n += sum(t.numel() * t.element_size() for t in self.net.teacher.state_dict().values())
        return int(n)

    @torch.inference_mode()
    def predict_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> image scores (B,: the maps' maxima) and anomaly maps (B, S, S)."""
        self.net.eval()
        maps = self.net.anomaly_maps(batch.to(self.device, non_blocking=True))
        return maps.flatten(1).amax(dim=1), maps
