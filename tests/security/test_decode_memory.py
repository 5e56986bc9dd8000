"""Memory under the decode budget, measured on real processes (peak RSS from /proc, reset with
clear_refs once the process is warm):

- the API, under 24 parallel uploads of max-size images from two tenants, holds at most
  max_decodes decoded images at a time: its peak grows by less than
  max_decodes x max_image_pixels x 4 bytes + 100 MB = 356 MB at the defaults (measured: 275 MB;
  without the gate every upload decodes at once);
- a worker fitting the largest job the budget allows (an archive whose entries add up to
  VISIONJOBS_MAX_JOB_PIXELS, here 16 solid 4096x4096 PNGs with the budget at 16 x 16.7 MP)
  decodes and resizes one entry at a time: its peak grows by less than 300 MB (measured: 129 MB;
  holding the decoded training set, as before, measured 1115 MB, growing with the entry count).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import ALICE, BOB, KEYS, auth
from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http
from tests.security import budget_data as B

pytestmark = pytest.mark.integration
MB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def test_api_memory_is_bounded_by_the_decode_caps_under_parallel_max_size_uploads(tmp_path):
    port = free_port()
    env = clean_env(VISIONJOBS_API_KEYS=KEYS, VISIONJOBS_DATA_DIR=str(tmp_path / "data"),
                    VISIONJOBS_DECODE_WAIT_S="120", VISIONJOBS_RATE_LIMIT_PER_MINUTE="0")
    api = Proc([*VISIONJOBS, "api", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", api, timeout=60)
        image = B.max_size_png(4096, 4096)  # 16.7 MP, 49 KB
        files = {"file": ("big.png", image, "image/png")}
        assert httpx.post(f"{base}/v1/uploads", files=files, headers=auth(ALICE), timeout=60).status_code == 201
        pid = api.p.pid
        before = _status(pid, "VmRSS")
        _reset_peak(pid)
        codes = []

        def one(key):
            codes.append(httpx.post(f"{base}/v1/uploads", files=files, headers=auth(key), timeout=180).status_code)

        threads = [threading.Thread(target=one, args=(ALICE if i % 2 else BOB,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        growth = _status(pid, "VmHWM") - before
    finally:
        api.stop()
    assert codes == [201] * 24, codes
    # VISIONJOBS_MAX_DECODES (default 4) decodes of VISIONJOBS_MAX_IMAGE_PIXELS (default 4096^2) at
    # 4 bytes a pixel (PIL keeps RGB as 32-bit), plus 100 MB for everything else
    bound = 4 * 4096 * 4096 * 4 + 100 * MB
    print(f"API peak growth {growth / MB:.0f} MB for 24 parallel 16.7 MP uploads (bound {bound / MB:.0f} MB)")
    assert growth < bound, (growth / MB, bound / MB)


_FIT = r"""
import json, sys, time
from pathlib import Path
from service.storage import build_object_store
from service.store.base import JobRecord, UploadRecord, new_id
from service.store.sqlite_store import SqliteJobStore
from worker.config import WorkerSettings
from worker.runner import Runner

data_dir, archive_path, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
settings = WorkerSettings(data_dir=data_dir, model_profile="tiny", device="cpu", redis_url=None, s3_bucket=None,
                          max_job_pixels=n * 4096 * 4096, job_time_limit_s=900)
store = SqliteJobStore(data_dir / "jobs.sqlite3")
objects = build_object_store(settings)
runner = Runner(settings, store, objects, name="memory-probe")

def fit(blob, size):
    upload = UploadRecord(id=new_id("upl"), tenant="t", filename="a.zip", content_type="application/zip",
                          size=len(blob), sha256="0" * 64, key=f"uploads/t/{time.time_ns()}")
    objects.put(upload.key, blob, "application/zip")
    store.put_upload(upload)
    job, _ = store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="anomaly.fit", params={
        "name": "m", "archive": upload.id, "images": [], "validation": None, "backbone": "tiny",
        "coreset_ratio": 0.01, "image_size": size, "seed": 0}))
    runner.execute(job.id)
    return store.get_job(job.id)

import io, zipfile
from PIL import Image
small = io.BytesIO()
with zipfile.ZipFile(small, "w") as zf:
    for i in range(2):
        buf = io.BytesIO(); Image.new("RGB", (64, 64), (i, 2, 3)).save(buf, "PNG"); zf.writestr(f"{i}.png", buf.getvalue())
warm = fit(small.getvalue(), 256)  # backbone built, code paths warm
assert warm.status == "succeeded", warm.error
status = lambda f: next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                        if l.startswith(f + ":"))
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
job = fit(archive_path.read_bytes(), 256)
print(json.dumps({"status": job.status, "error": job.error, "before": before, "peak": status("VmHWM"),
                  "counts": (job.result or {}).get("counts")}))
"""


def test_worker_fitting_the_largest_allowed_archive_stays_under_its_memory_bound(tmp_path):
    n = 16
    archive = tmp_path / "big.zip"
    archive.write_bytes(B.zip_repeated(B.max_size_png(4096, 4096), n))
    env = clean_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _FIT, str(tmp_path / "data"), str(archive), str(n)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded", out
    assert out["counts"]["train"] + out["counts"]["validation_normal"] == n
    growth = out["peak"] - out["before"]
    print(f"worker peak growth {growth / MB:.0f} MB fitting {n} x 4096x4096 entries (bound 300 MB)")
    assert growth < 300 * MB, growth / MB
