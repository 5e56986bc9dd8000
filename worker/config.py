"""Worker-only settings (env prefix VISIONJOBS_), on top of the shared ones."""
from __future__ import annotations

from pydantic import Field

from service.core.config import Settings


class WorkerSettings(Settings):
    gpus: str = Field("", description="Comma-separated CUDA device ids for `visionjobs worker`, or all; empty = CPU processes.")
    queues: str = Field("", description="Comma-separated queues (job kinds) this worker consumes; empty = all.")
    concurrency: int = Field(1, description="Worker processes per GPU (or CPU processes when no GPU).")
    preload: bool = Field(False, description="Load the queues' models before taking the first job.")
    model_cache_gb: float = Field(0.0, description="Bound of the warm model cache in GiB of parameters; 0 = one model per kind.")
    visibility_timeout_s: int = Field(6 * 3600, description="Redis broker visibility timeout; above the longest job.")
    max_checkpoint_bytes: int = Field(2**30, description="Largest training checkpoint a job may keep in object "
                                                        "storage (Reverse Distillation, WideResNet-50-2: up to ~0.9 GB).")
    job_time_limit_s: float = Field(3600.0, description="Longest a job may run, decoding, model loading, encoding and "
                                                        "uploads included, before it fails with `timeout`.")
    job_kill_grace_s: float = Field(10.0, description="A job still running this long after its time limit (inside one "
                                                      "long call) is failed with `timeout` by a watchdog, and the "
                                                      "worker process exits so the launcher replaces it.")
    batch_max: int = Field(1, ge=1, le=16, description="Dynamic batching: colorize jobs with the same working size and "
                                                       "settings run as one batch of up to this many (4 suits GPUs).")
    drain_timeout_s: float = Field(20.0, ge=0, description="On SIGTERM (scale-down) a worker takes no new job and "
                                   "lets its job run this long; a job still running then is handed back to the "
                                   "queue (stopped at its next step, re-queued at once, no attempt spent). Keep it "
                                   "under the orchestrator's grace period (Kubernetes: 30 s) minus ~5 s.")
    job_log_bytes: int = Field(32768, ge=0, le=2**20, description="Bound of each job's log (stage changes, warnings, "
                               "a failure's traceback summary): its last lines within this many bytes are kept.")
    device: str = Field("auto", description="torch device for pipelines: auto | cpu | cuda.")
    channels_last: bool = Field(True, description="Channels-last UNet/ControlNet on CUDA.")
    controlcolor_repo: str = Field("UPstud/ColorCtrl", description="Hub repository `models fetch` takes the Control "
                                   "Color checkpoints from (default: a third-party mirror of the authors' release).")
    colorize_fp32: bool = Field(False, description="Load the colorize models in float32 on CUDA, as the official "
                                                   "Control Color code (default float16: about half the memory and time).")
    torch_compile: str = Field("", description="Comma-separated kinds whose denoiser is torch.compile'd on load "
                                               "(e.g. colorize,video.generate); the first job pays the compilation.")
