"""One tiny job of every kind, in process, on the installed package alone (no test helpers, no
scikit-image: only what the worker image has). Run by tests/deploy/test_worker_env.py with the
python of a virtualenv built from the worker image's install command; prints one JSON object
{kind: status or error} and exits 1 unless every job succeeded."""
from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def texture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.sin(np.arange(size) / 3.0), np.cos(np.arange(size) / 5.0))
    noise = rng.normal(0, 0.1, (size, size))
    grey = ((base + noise - base.min()) / (np.ptp(base) + 0.5) * 200).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey, grey // 2 + 40, 255 - grey], -1))


def main() -> int:
    from models.video.media import encode_mp4
    from service.kinds import KINDS
    from service.schemas import AnomalyFitRequest, AnomalyScoreRequest, ColorizationRequest
    from service.schemas import SubjectGenerationRequest, SubjectModelRequest, VideoEditRequest, VideoGenerationRequest
    from service.storage import build_object_store
    from service.store.base import JobRecord, UploadRecord, new_id
    from service.store.sqlite_store import SqliteJobStore
    from worker.config import WorkerSettings
    from worker.runner import Runner

    tmp = Path(tempfile.mkdtemp())
    settings = WorkerSettings(data_dir=tmp, model_profile="tiny", redis_url=None, s3_bucket=None,
                              progress_interval_s=0.0)
    runner = Runner(settings, SqliteJobStore(tmp / "jobs.sqlite3"), build_object_store(settings), name="image-env")

    def upload(data: bytes, content_type: str, size=(0, 0)) -> str:
        rec = UploadRecord(id=new_id("upl"), tenant="t", filename="f", content_type=content_type, size=len(data),
                           sha256="-", key=f"uploads/t/{new_id('u')}", width=size[0], height=size[1])
        runner.objects.put(rec.key, data, content_type)
        runner.store.put_upload(rec)
        return rec.id

    def run(kind: str, request) -> dict:
        params = {**request.model_dump(), "seed": 1}
        job = runner.store.create_job(JobRecord(id=new_id("job"), tenant="t", kind=kind, params=params))[0]
        runner.execute(job.id)
        return runner.store.get_job(job.id)

    frames = np.stack([np.asarray(texture(i, 64)) for i in range(4)])
    images = [upload(png(texture(i)), "image/png", (64, 64)) for i in range(4)]
    done = {
        "colorize": run("colorize", ColorizationRequest(image=images[0], steps=1, prompt="a red brick wall")),
        "video.generate": run("video.generate", VideoGenerationRequest(prompts=["a cat"], steps=1, metrics=["cscv"])),
        "video.edit": run("video.edit", VideoEditRequest(
            video=upload(encode_mp4(frames, fps=8), "video/mp4"), source_prompt="a wall", edits=["a red wall"],
            tune_steps=1, frames=2, width=64, height=64, steps=1)),
        "anomaly.fit": run("anomaly.fit", AnomalyFitRequest(name="t", images=images[:3], image_size=64)),
        "subject.generate": run("subject.generate", SubjectGenerationRequest(
            subject_images=images[:3], subject_class="wall", prompt="at night", steps=1, width=64, height=64,
            metrics=["clip_i", "clip_t", "dino"])),
        "subject.tune": run("subject.tune", SubjectModelRequest(subject_images=images[:3], subject_class="wall",
                                                                steps=2)),
    }
    fit = done["anomaly.fit"]
    if fit.status == "succeeded":
        done["anomaly.score"] = run("anomaly.score", AnomalyScoreRequest(model_id=fit.result["model_id"],
                                                                          images=images[3:]))
    report = {kind: job.status if job.status == "succeeded" else f"{job.status}: {job.error}"
              for kind, job in done.items()}
    print(json.dumps(report))
    return 0 if set(report) == set(KINDS) and all(v == "succeeded" for v in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
