"""Settings shared by every process kind (env prefix VISIONJOBS_).

The worker extends these in worker/config.py. Every field here is listed in the README's
configuration table; tests/test_docs.py fails when one is missing.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISIONJOBS_", extra="ignore")

    # --- mode and auth ---
    redis_url: str | None = Field(None, description="Redis URL (`redis://` or `rediss://` = TLS); set = distributed mode "
                                                    "(Redis job store + Celery broker). With sentinels: scheme, "
                                                    "database and credentials only.")
    api_keys: str = Field("", description="Comma-separated API keys; `name:key` names the tenant. Each key is a tenant.")
    allow_anonymous: bool = Field(False, description="Serve one anonymous tenant when no keys are set (always on for `visionjobs run`).")
    data_dir: Path = Field(Path("./data"), description="Embedded job store and local object store directory.")
    public_url: str | None = Field(None, description="Absolute base URL clients reach the API at; default: the request's own base URL.")
    signing_secret: str | None = Field(None, description="HMAC secret for local file URLs. Required outside embedded mode.")

    # --- object storage ---
    s3_bucket: str | None = Field(None, description="S3 bucket; set = S3-compatible object store instead of the local one.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint the services use (e.g. http://minio:9000).")
    s3_public_endpoint_url: str | None = Field(None, description="S3 endpoint clients reach; presigned URLs are signed for it.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: str | None = Field(None, description="S3 secret access key.")
    s3_expire_days: int = Field(8, description="S3 lifecycle backstop (compose's minio-init): objects under uploads/ "
                                               "and jobs/ expire after this many days; keep it above retention_s.")
    url_ttl_s: int = Field(3600, description="Lifetime of signed result URLs, seconds.")

    # --- limits ---
    max_upload_bytes: int = Field(25 * 1024 * 1024, description="Largest accepted upload, bytes.")
    max_image_pixels: int = Field(4096 * 4096, description="Largest accepted image, width x height.")
    max_prompt_chars: int = Field(1000, description="Longest accepted prompt, characters.")
    max_steps: int = Field(100, description="Most denoising steps a job may ask for.")
    max_outputs: int = Field(4, description="Most outputs one job may ask for.")
    max_body_bytes: int = Field(1024 * 1024, description="Largest JSON request body, bytes.")
    rate_limit_per_minute: int = Field(6000, description="Requests per API key per minute (0 = no limit); over it: 429.")
    max_active_jobs: int = Field(500, description="Queued + running jobs per API key; over it submissions get 429.")
    max_tenant_upload_bytes: int = Field(10 * 1024**3, description="Bytes of uploads one API key keeps stored "
                                                                    "(until retention ends; 0 = no quota); over it: 429.")
    max_tenant_params_bytes: int = Field(512 * 1024**2, description="Bytes of job parameters one API key keeps in the "
                                                                    "job store (each job's for retention_s + 1 day from "
                                                                    "submission; 0 = no quota); over it: 429.")
    max_tenant_artifact_bytes: int = Field(20 * 1024**3, description="Bytes of tuned artifacts (anomaly, subject and "
                                                                      "tuned video models) one API key keeps; at or over "
                                                                      "it, jobs that make one get 429 (0 = no quota).")
    max_waiters_per_key: int = Field(1000, description="Open long-polls (`wait` > 0) plus event streams per API key in "
                                                       "one API process (0 = no cap); over it: 429.")
    max_video_frames: int = Field(481, description="Most pixel frames one generated video may have (30 s at 16 fps).")
    max_video_pixels: int = Field(720 * 480, description="Largest generated frame, width x height.")
    max_subject_images: int = Field(8, description="Most subject photos one subject-driven request may give (at most 8).")
    max_subject_pixels: int = Field(768 * 768, description="Largest subject-driven image to generate, width x height.")
    max_tune_steps: int = Field(2000, description="Most DreamBooth-LoRA tuning steps one job may ask for.")
    max_class_images: int = Field(200, description="Most prior-preservation class images one tuning may generate.")
    max_lora_rank: int = Field(32, description="Highest LoRA rank of a subject model (its stored size grows with it: "
                                               "about 0.77 MB per rank on SD 1.5).")
    max_subject_models: int = Field(100, description="Subject models per API key (LoRA deltas kept in object storage); "
                                                     "over it, tuning submissions get 429 until some are deleted.")
    max_train_image_epochs: int = Field(
        100_000, description="Training work cap of an anomaly model fit (Reverse Distillation): max_epochs x normal "
                             "images, checked at submission (and on the training split by the worker).")

    # --- work budgets of inputs (checked from headers before decoding; README "Work budgets") ---
    max_job_pixels: int = Field(2**30, description="Sum of the decoded pixels of one job's images (archive entries "
                                                   "included), from their headers, checked at submission.")
    max_image_frames: int = Field(1000, description="Most frames of an animated image (GIF, APNG, WebP) or pages of a TIFF.")
    max_frame_pixels: int = Field(2**32, description="Frames x canvas pixels of an animated image or a video input "
                                                     "(what decoding every frame costs).")
    max_image_scans: int = Field(32, description="Most JPEG scans (progressive files have about 10; each scan is a "
                                                 "full pass over the image).")
    max_image_chunks: int = Field(16384, description="Most PNG/WebP chunks, JPEG segments, GIF blocks or TIFF "
                                                     "directory entries and strips of one image.")
    max_decodes: int = Field(4, description="Concurrent image decodes (upload checks) per API process; beyond it "
                                            "an upload waits up to decode_wait_s, then 503.")
    max_tenant_decodes: int = Field(2, description="Concurrent image decodes per tenant per API process; beyond it "
                                                   "an upload waits up to decode_wait_s, then 429.")
    decode_wait_s: float = Field(10.0, description="How long an upload waits for a decode slot, seconds.")

    # --- jobs ---
    lease_s: float = Field(30.0, description="Running-job lease; a worker renews it every lease_s/3.")
    max_attempts: int = Field(3, description="Attempts before a job whose worker vanished fails with `worker_lost`.")
    retention_s: int = Field(7 * 24 * 3600, description="How long final jobs, their events and outputs, and uploads "
                                                            "are kept (records and bytes), seconds.")
    artifact_idle_s: int = Field(30 * 24 * 3600, description="Tuned artifacts (anomaly, subject and tuned video "
                                                             "models) no job made or used for this long are deleted, "
                                                             "resource and bytes, seconds (0 = kept until deleted).")
    purge_interval_s: float = Field(60.0, description="How often each API process deletes the objects whose retention "
                                                      "ended, seconds.")
    reaper_interval_s: float = Field(5.0, description="How often API and workers look for expired leases, seconds.")
    progress_interval_s: float = Field(0.25, description="Least time between two progress writes of one job, seconds.")

    # --- Redis: failover, TLS, ACL users (README "Redis: failover, TLS, ACL users") ---
    redis_sentinels: str = Field("", description="Comma-separated host:port of Redis Sentinels; set = distributed mode, "
                                                 "the primary found (and followed on failover) through them.")
    redis_master_name: str = Field("visionjobs", description="The Sentinel name of the primary.")
    redis_username: str | None = Field(None, description="Redis ACL user (default: the URL's, else `default`).")
    redis_password: str | None = Field(None, description="Redis password (default: the URL's).")
    redis_sentinel_username: str | None = Field(None, description="ACL user of the sentinels.")
    redis_sentinel_password: str | None = Field(None, description="Password of the sentinels (their requirepass).")
    redis_sentinel_tls: bool = Field(False, description="The sentinels speak TLS too (same CA and client certificate).")
    redis_tls_ca_file: Path | None = Field(None, description="CA bundle that signs the Redis server certificate "
                                                             "(rediss://; default: the system CAs).")
    redis_tls_cert_file: Path | None = Field(None, description="Client certificate for Redis TLS (mutual TLS).")
    redis_tls_key_file: Path | None = Field(None, description="Private key of the client certificate.")
    redis_tls_verify: bool = Field(True, description="Verify the Redis server certificate and host name.")
    redis_wait_replicas: int = Field(1, ge=0, description="A submission answers 202 only once its job reached this "
                                                          "many replicas (Redis WAIT), when the primary has replicas; "
                                                          "0 = never wait.")
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=4000, description="How long a submission waits for its replicas; then "
                                                               "503 + Retry-After, and the job is withdrawn.")

    redis_pool_size: int = Field(64, description="Redis connections of one API process's request path (an asyncio "
                                                 "pool; waits hold none). The reaper and webhook deliverer have their own.")

    log_level: str = Field("INFO", description="Python logging level of every process.")

    webhook_allow_hosts: str = Field("", description="Comma-separated hosts or CIDR networks webhooks may target even "
                                                     "when private or loopback (default: public addresses only).")
    webhook_retry_base_s: float = Field(2.0, description="First webhook retry delay; doubles per attempt (8 attempts).")
    webhook_timeout_s: float = Field(10.0, description="Total deadline of one webhook attempt (resolve, connect, "
                                                       "send, response head and body), seconds.")
    webhook_workers: int = Field(8, ge=1, description="Webhook deliverer threads per API process.")
    webhook_tenant_concurrency: int = Field(2, ge=1, description="Webhook deliveries in flight per tenant per API "
                                                                 "process; more wait in the outbox.")

    cors_origins: str = Field("", description="Comma-separated origins (https://app.example.com) whose browser "
                                              "pages may call the API (CORS); empty = no CORS headers at all.")
    url_input_allow_hosts: str = Field("", description="Comma-separated hosts or CIDR networks URL inputs may be "
                                                       "fetched from even when private or loopback (default: public "
                                                       "addresses only).")
    url_input_timeout_s: float = Field(30.0, gt=0, description="Total deadline of fetching one URL input (resolve, "
                                                               "connect, TLS, the whole body), seconds.")
    max_url_inputs: int = Field(16, ge=0, description="URL and data: inputs one request may give (each is fetched "
                                                      "into an upload before the job is accepted); 0 = none.")

    refuse_unserved: bool = Field(True, description="Refuse a submission at once when no live worker can run its kind "
                                                    "(503 + Retry-After without one, 422 naming missing weights); "
                                                    "false: queue it for a worker still to come.")

    # --- models ---
    model_profile: str = Field("pretrained", description="tiny | pretrained | auto (auto: pretrained where present, else tiny).")
    model_dir: Path | None = Field(None, description="Root of diffusers-format model folders for the pretrained profile.")
    autoguidance_dir: Path | None = Field(
        None, description="Colorization autoguidance guide: a folder with unet/ and controlnet/ of a weaker model "
                          "(relative to the model dir or absolute). Tiny profile: built in code.")

    def webhook_allow_list(self) -> list[str]:
        return [h.strip() for h in self.webhook_allow_hosts.split(",") if h.strip()]

    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    def url_input_allow_list(self) -> list[str]:
        return [h.strip() for h in self.url_input_allow_hosts.split(",") if h.strip()]

    @property
    def embedded(self) -> bool:
        return not (self.redis_url or self.redis_sentinels)

    @property
    def distributed(self) -> bool:
        return not self.embedded

    def redis_target(self):
        """Where the job store and the Celery broker are (service/store/connection.py)."""
        from service.store.connection import RedisTarget

        return RedisTarget.from_settings(self)

    def key_map(self) -> dict[str, str]:
        """API key -> tenant id."""
        from service.core.security import parse_api_keys

        return parse_api_keys(self.api_keys)


@lru_cache
def get_settings() -> Settings:
    return Settings()
