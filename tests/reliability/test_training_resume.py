"""A Reverse Distillation training whose worker is SIGKILLed mid-training: the lease expires,
attempt 2 (on another worker process) resumes from the checkpoint the killed attempt saved
after its last epoch, not from epoch 0, and finishes; the model it stores is the best epoch's,
bit for bit the model of the same training run without a kill. Checkpoints are gone once the
jobs end. Tiny teacher, 64-px skimage brick crops, a few seconds of training."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ALICE, auth, png_bytes
from tests.models.anomaly_data import make_benchmark
from tests.reliability.conftest import Cluster

pytestmark = pytest.mark.integration
pytest.importorskip("torch")
EPOCHS = 20
# the kill comes after the reference run's best epoch, so the best weights must survive it (the
# seeded run's best epoch depends on the CPU's float kernels: 4 on one machine, 6 on another)
KILLED_EPOCHS_AFTER_BEST = 2


@pytest.fixture(scope="module")
def anomaly_cluster(tmp_path_factory, shared_redis):
    """api + 2 anomaly worker processes: at most 2 attempts per job, 2 s leases."""
    c = Cluster(tmp_path_factory.mktemp("training"), shared_redis, VISIONJOBS_MAX_ATTEMPTS="2")
    try:
        c.start_api()
        c.start_workers(2, queues="anomaly.fit,anomaly.score")
        yield c
    finally:
        c.close()


def dataset_zip() -> bytes:
    """12 normal crops, 8 defective ones with their masks, as a labelled archive."""
    b = make_benchmark("brick", crop=64, n_train=12, n_validation=0, n_test_normal=2, n_test_per_defect=2, seed=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, im in enumerate(b.train):
            zf.writestr(f"normal/{i:02d}.png", png_bytes(im))
        for i, s in enumerate(x for x in b.test if x.defect):
            zf.writestr(f"abnormal/{i:02d}.png", png_bytes(s.image))
            zf.writestr(f"mask/{i:02d}.png", png_bytes(Image.fromarray(s.mask.astype(np.uint8) * 255)))
    return buf.getvalue()


def train(c: Cluster, archive: str) -> str:
    body = {"name": "bricks", "model": "reverse_distillation", "archive": archive, "backbone": "tiny",
            "image_size": 64, "seed": 1, "max_epochs": EPOCHS, "patience": 0, "batch_size": 2}
    r = httpx.post(f"{c.base}/v1/anomaly-models", json=body, headers=auth(ALICE), timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def student_sha(c: Cluster, model_id: str) -> str:
    (path,) = (Path(c.tmp) / "data" / "objects" / "anomaly").glob(f"*/{model_id}/student.safetensors")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def epochs_shown(job: dict) -> int:
    return len(((job.get("result") or {}).get("training") or {}).get("history") or [])


def test_killed_training_resumes_from_its_last_epoch_and_keeps_the_best(anomaly_cluster):
    c = anomaly_cluster
    r = httpx.post(f"{c.base}/v1/uploads", files={"file": ("d.zip", dataset_zip(), "application/zip")},
                   headers=auth(ALICE), timeout=30)
    assert r.status_code == 201, r.text
    archive = r.json()["id"]

    # the same training without a kill: the reference
    ref = c.wait_final(train(c, archive), timeout=180)
    assert ref["status"] == "succeeded" and ref["attempt"] == 1, ref
    ref_training = ref["result"]["training"]
    kill_after_epoch = ref_training["best_epoch"] + KILLED_EPOCHS_AFTER_BEST
    assert kill_after_epoch + 2 < EPOCHS and not ref_training["stopped_early"], ref_training

    job_id = train(c, archive)
    seen = c.wait_status(job_id, lambda j: j["status"] == "running" and epochs_shown(j) >= kill_after_epoch,
                         timeout=180)
    assert epochs_shown(seen) < EPOCHS, "training ended before the kill: make it longer"
    os.kill(c.worker_pid(job_id), signal.SIGKILL)

    final = c.wait_final(job_id, timeout=180)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    training = final["result"]["training"]
    # attempt 2 resumed after the last epoch attempt 1 saved: at least the one the job showed before the kill
    # (its checkpoint is written before the epoch is reported), never from the start
    resumed = training["resumed_from_epoch"]
    assert training["attempt"] == 2 and resumed is not None and kill_after_epoch <= resumed < EPOCHS, training
    starts = sorted(c.starts()[job_id], key=lambda s: s.attempt)
    assert [s.attempt for s in starts] == [1, 2] and starts[0].pid != starts[1].pid
    logs = c.worker_logs()
    assert f"job {job_id} attempt 2 resumes training after epoch {resumed}" in logs
    assert f"job {job_id} attempt 1 resumes" not in logs
    stages = [e["stage"] for e in c.events(job_id)]
    assert any(f"(attempt 2, resumed from epoch {resumed})" in s for s in stages)
    # attempt 2 ran only the epochs after the checkpoint: its first step reported is in epoch resumed + 1
    attempt2 = stages[max(i for i, s in enumerate(stages) if s == "requeued after lost worker"):]
    steps = [s for s in attempt2 if " step " in s]
    assert steps and steps[0].startswith(f"epoch {resumed + 1}/{EPOCHS} step "), attempt2[:8]

    # one history, every epoch once; the same as the uninterrupted run's, and the same best epoch
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert [h["epoch"] for h in training["history"]] == list(range(1, EPOCHS + 1))
    assert strip(training["history"]) == strip(ref_training["history"])
    assert training["best_epoch"] == ref_training["best_epoch"] < resumed
    # the model is the best checkpoint's (an epoch before the kill), bit for bit the uninterrupted run's
    assert student_sha(c, final["result"]["model_id"]) == student_sha(c, ref["result"]["model_id"])
    assert final["result"]["test_metrics"] == ref["result"]["test_metrics"]

    # the checkpoints went with the jobs
    for jid in (ref["id"], job_id):
        assert not (Path(c.tmp) / "data" / "objects" / "jobs" / jid / "training").exists()


def test_killed_on_every_attempt_leaves_no_checkpoint(anomaly_cluster):
    """The last attempt keeps its checkpoints in memory: a job whose every worker is lost fails with
    `worker_lost` and leaves nothing under jobs/{id}/training/."""
    c = anomaly_cluster
    r = httpx.post(f"{c.base}/v1/uploads", files={"file": ("d.zip", dataset_zip(), "application/zip")},
                   headers=auth(ALICE), timeout=30)
    job_id = train(c, r.json()["id"])
    checkpoint = Path(c.tmp) / "data" / "objects" / "jobs" / job_id / "training" / "checkpoint.pt"
    c.wait_status(job_id, lambda j: j["status"] == "running" and epochs_shown(j) >= 2, timeout=180)
    assert checkpoint.is_file()  # attempt 1 of 2 stores its checkpoint
    os.kill(c.worker_pid(job_id), signal.SIGKILL)
    c.wait_status(job_id, lambda j: j["status"] == "running" and j["attempt"] == 2
                  and "resumed from epoch" in (j["stage"] or ""), timeout=180)
    assert not checkpoint.exists()  # read and deleted by the last attempt
    os.kill(c.worker_pid(job_id), signal.SIGKILL)
    final = c.wait_final(job_id, timeout=60)
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost", final
    assert not checkpoint.parent.exists() or not any(checkpoint.parent.iterdir())
