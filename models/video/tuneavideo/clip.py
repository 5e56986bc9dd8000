"""Input clips for Tune-A-Video: decode a video file, pick frames, resize and center-crop them
to the working size.

MP4 / WebM / MOV / GIF (anything FFmpeg demuxes) are read with PyAV from bytes or a path.
Frames are picked by index and only the picked frames are converted and resized, so a long 4K
upload costs one decode pass, not its pixels in RAM.

Frame choice, as the official dataset (tuneavideo/data/dataset.py l. 35, `__getitem__`:
`list(range(sample_start_idx, len(vr), sample_frame_rate))[:n_sample_frames]`, with
sample_start_idx 0 and sample_frame_rate 2 in every configs/*.yaml, e.g. man-skiing.yaml l. 10-11): `frame_stride` frames apart
from `start_frame`, so 24 frames span 47 source frames and tuning sees the clip's motion at the
paper's rate. `frame_stride="spread"` spreads them over the whole clip instead (first and last
included). Named deviations: a clip too short for the request is refused naming what it needs
(the official silently tunes on fewer frames); frames are resized to cover the target size and
center-cropped (the official decord reader resizes to width x height, stretching non-square clips;
no switch: its FFmpeg scaler's pixels are not reproducible here anyway).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# Guardrails of the decoder itself; the API sets its own (stricter) request limits.
MAX_SOURCE_FRAMES = 10_000
MAX_SOURCE_PIXELS = 4096 * 4096
MAX_DURATION_S = 600.0
FRAME_STRIDE = 2  # configs/*.yaml `sample_frame_rate`
START_FRAME = 0  # configs/*.yaml `sample_start_idx`


class VideoDecodeError(ValueError):
    """The bytes are not a readable video, or hold no frames."""


class VideoLimitError(ValueError):
    """A readable video beyond a decoding limit (frames, duration, pixels), or with fewer
    frames than requested."""


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (F, H, W, 3), RGB, at the requested size
    indices: list  # source frame index of each frame
    source_frames: int  # frames in the source video
    source_size: tuple  # (width, height) of the source
    source_fps: float | None  # average frame rate, when the container says
    meta: dict = field(default_factory=dict)
    frame_stride: int | str = FRAME_STRIDE
    start_frame: int = START_FRAME

    @property
    def settings(self) -> dict:
        """JSON-able description of how the clip was made (for the tuned artifact)."""
        f, h, w = self.frames.shape[:3]
        return dict(frames=f, width=w, height=h, indices=list(map(int, self.indices)), frame_stride=self.frame_stride,
                    start_frame=self.start_frame, source_frames=self.source_frames, source_size=list(self.source_size),
                    source_fps=self.source_fps)


def sample_indices(total: int, n: int, frame_stride: int | str = FRAME_STRIDE, start_frame: int = START_FRAME) -> list[int]:
    """`n` frame indices of a `total`-frame clip: every `frame_stride`-th from `start_frame`
    (the official rule), or with frame_stride "spread" spread uniformly from `start_frame` to
    the last frame, both included (n == 1: the start frame). Strictly increasing."""
    if total < 1 or n < 1:
        raise ValueError(f"need total >= 1 and n >= 1, got total={total}, n={n}")
    if isinstance(start_frame, bool) or not isinstance(start_frame, int) or start_frame < 0:
        raise ValueError(f"`start_frame` has to be an int >= 0, got {start_frame!r}")
    if frame_stride == "spread":
        if n > total - start_frame:
            raise VideoLimitError(f"the video has {total} frames, {n} from frame {start_frame} were requested")
        if n == 1:
            return [start_frame]
        return [int(i) for i in np.round(np.linspace(start_frame, total - 1, n)).astype(int)]
    if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"`frame_stride` has to be an int >= 1 or 'spread', got {frame_stride!r}")
    indices = list(range(start_frame, total, frame_stride))[:n]
    if len(indices) < n:
        need = start_frame + (n - 1) * frame_stride + 1
        raise VideoLimitError(f"the video has {total} frames; {n} frames every {frame_stride} from frame {start_frame} "
                              f"need {need}: ask for fewer frames, a smaller frame_stride, or frame_stride 'spread'")
    return indices


def resize_center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width x height (aspect kept), then crop the center."""
    w, h = image.size
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((rw, rh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (rw - width) // 2, (rh - height) // 2
    return image.crop((left, top, left + width, top + height))


def _open(source):
    import av  # deferred: the API process never decodes video

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise VideoDecodeError("the video is empty (0 bytes)")
            return av.open(io.BytesIO(bytes(source)), mode="r")
        return av.open(str(Path(source)), mode="r")
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"not a readable video: {exc}") from exc


def _video_stream(container):
    if not container.streams.video:
        raise VideoDecodeError("the file has no video stream")
    return container.streams.video[0]


def probe(source) -> dict:
    """Frame count (by demuxing, no decoding), size, fps and duration of the first video
    stream. Raises VideoDecodeError / VideoLimitError."""
    import av

    with _open(source) as container:
        stream = _video_stream(container)
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > MAX_SOURCE_PIXELS:
            raise VideoLimitError(f"frames of {w}x{h} exceed {MAX_SOURCE_PIXELS} pixels")
        fps = float(stream.average_rate) if stream.average_rate else None
        duration = float(container.duration / av.time_base) if container.duration else None
        if duration is not None and duration > MAX_DURATION_S:
            raise VideoLimitError(f"the video lasts {duration:.1f} s, more than {MAX_DURATION_S:g} s")
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size:  # the flush packet at the end is empty
                    count += 1
                    if count > MAX_SOURCE_FRAMES:
                        raise VideoLimitError(f"the video has more than {MAX_SOURCE_FRAMES} frames")
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"the video is corrupt: {exc}") from exc
    return dict(frames=count, width=w, height=h, fps=fps, duration=duration)


def _decode_at(source, wanted: list[int], width: int, height: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode every frame once, keep the wanted ones resized; also return how many decoded."""
    import av

    keep = set(wanted)
    got: dict[int, np.ndarray] = {}
    n = 0
    with _open(source) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if n in keep:
                    got[n] = np.asarray(resize_center_crop(frame.to_image().convert("RGB"), width, height))
                n += 1
                if n > MAX_SOURCE_FRAMES:
                    raise VideoLimitError(f"the video has more than {MAX_SOURCE_FRAMES} frames")
        except av.error.FFmpegError as exc:
            if not got and n == 0:
                raise VideoDecodeError(f"no frame could be decoded: {exc}") from exc
            # a truncated tail: keep what decoded (the caller re-samples if frames are missing)
    return got, n


def read_clip(source, num_frames: int, width: int, height: int, frame_stride: int | str = FRAME_STRIDE,
              start_frame: int = START_FRAME) -> Clip:
    """Decode `source` (bytes or a path) into `num_frames` RGB frames of width x height, picked
    by `sample_indices` (default: every 2nd from frame 0, as the official). Raises
    VideoDecodeError (unreadable, empty) or VideoLimitError (beyond a limit, or too short)."""
    for name, v in (("num_frames", num_frames), ("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"`{name}` has to be an int >= 1, got {v!r}")
    info = probe(source)
    total = info["frames"]
    if total < 1:
        raise VideoDecodeError("the video has no frames")
    wanted = sample_indices(total, num_frames, frame_stride, start_frame)
    got, decoded = _decode_at(source, wanted, width, height)
    if len(got) < len(wanted):
        # Packets and decoded frames can disagree (a broken tail, or codecs whose packets
        # are not one frame each): sample again over the frames that really decode.
        if decoded < 1:
            raise VideoDecodeError("no frame could be decoded")
        wanted = sample_indices(decoded, num_frames, frame_stride, start_frame)
        got, decoded = _decode_at(source, wanted, width, height)
        if len(got) < len(wanted):
            raise VideoDecodeError(f"only {len(got)} of {len(wanted)} sampled frames decode")
        total = decoded
    return Clip(
        frames=np.stack([got[i] for i in wanted]),
        indices=wanted,
        source_frames=total,
        source_size=(info["width"], info["height"]),
        source_fps=info["fps"],
        meta=dict(duration=info["duration"]),
        frame_stride=frame_stride,
        start_frame=start_frame,
    )
