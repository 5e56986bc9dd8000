"""Video encode/decode at the edge of the models: uint8 RGB frames <-> MP4 bytes.

MP4 = H.264 (libx264) in yuv420p, the format every browser and player decodes, with the
`moov` atom in front (faststart) so a presigned URL streams before the download ends.
Encoding goes through PyAV (FFmpeg's libraries in-process; its wheels bundle libx264).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from models.media import encode_image

MP4_CONTENT_TYPE = "video/mp4"


def _check_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames have to be (F >= 1, H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames have to be uint8, got {arr.dtype}")
    return arr


def _even(arr: np.ndarray) -> np.ndarray:
    """yuv420p subsamples chroma 2x2, so H.264 needs even sides: repeat the last row/column
    of an odd side (CogVideoX's 720x480 and the tiny 32x32 are even and pass unchanged)."""
    h, w = arr.shape[1:3]
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return arr


def encode_mp4(frames, fps: int = 16, crf: int = 18, preset: str = "medium") -> bytes:
    """(F, H, W, 3) uint8 RGB -> MP4 bytes (H.264 High, yuv420p, constant `fps`). `crf` 18 is
    visually lossless for x264; raise it for smaller files."""
    arr = _even(_check_frames(frames))
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"`fps` has to be an int >= 1, got {fps!r}")
    # faststart rewrites the file after the last frame (moov to the front), which needs a
    # seekable, re-openable file: encode to a temporary file, not to memory.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "video.mp4")
        _encode_to(path, arr, fps, crf, preset)
        return path.read_bytes()


def _encode_to(path: Path, arr: np.ndarray, fps: int, crf: int, preset: str) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for i, frame in enumerate(arr):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str


def decode_mp4(data: bytes) -> tuple[np.ndarray, VideoInfo]:
    """MP4 bytes -> ((F, H, W, 3) uint8 RGB, info); every frame is decoded (not the header's count)."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        raise ValueError(f"not a decodable video ({exc})") from exc
    with container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("the video holds no frames")
    arr = np.stack(frames)
    return arr, VideoInfo(len(frames), fps, arr.shape[2], arr.shape[1], codec, pix_fmt)


def thumbnail(frames, format: str = "jpeg", quality: int = 90) -> tuple[bytes, str]:
    """The first frame as an image: (bytes, content type)."""
    arr = _check_frames(frames)
    return encode_image(Image.fromarray(arr[0]), format=format, quality=quality)
