"""Tune-A-Video (Wu et al., 2023): one-shot tuning of an inflated SD UNet on a clip, DDIM
inversion and text-driven editing. Load through the registry:

    from models.profiles import load_video_edit
    pipe = load_video_edit("tiny")            # or "pretrained" / "auto"

See pipeline.py for the flow, inflate.py for the model changes, clip.py for input decoding.
"""

from models.video.tuneavideo.artifact import ArtifactMismatch, TunedArtifact, apply_tuned, export_tuned
from models.video.tuneavideo.clip import Clip, VideoDecodeError, VideoLimitError, read_clip, sample_indices
from models.video.tuneavideo.inflate import TRAINABLE_MODULES, VideoUNet, inflate_unet, trainable_parameters
from models.video.tuneavideo.pipeline import EditOutput, TuneAVideoPipeline, TuneOutput, ddim_inversion_step

__all__ = [
    "ArtifactMismatch", "Clip", "EditOutput", "TRAINABLE_MODULES", "TunedArtifact", "TuneAVideoPipeline",
    "TuneOutput", "VideoDecodeError", "VideoLimitError", "VideoUNet", "apply_tuned", "ddim_inversion_step",
    "export_tuned", "inflate_unet", "read_clip", "sample_indices", "trainable_parameters",
]
