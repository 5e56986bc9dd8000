"""S3-compatible object store (AWS S3, MinIO) via boto3."""
from __future__ import annotations

import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from service.storage.base import InvalidKey, ObjectNotFound, ObjectStore, SignedUrl, check_key

# SigV4 presigned URLs cannot outlive 7 days; S3 rejects longer ones at fetch time.
_MAX_PRESIGN_S = 7 * 24 * 3600
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3ObjectStore(ObjectStore):
    sign_may_block = True  # presigning may refresh credentials (instance roles, STS) over the network

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ):
        self.bucket = bucket
        self.region = region
        # Path-style: MinIO and most self-hosted servers do not serve bucket subdomains.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        # A private session: boto3's default session is not safe to share across threads.
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        # SigV4 signs the Host header, so a URL signed for http://minio:9000 and rewritten to
        # the public host fails verification. Presign with a client that *is* public.
        self._public = session.client("s3", endpoint_url=public_endpoint_url or endpoint_url, config=config)

    @classmethod
    def from_settings(cls, settings) -> "S3ObjectStore":
        return cls(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=check_key(key))
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            raise
        with obj["Body"] as body:
            return body.read()

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=check_key(key))
            return True
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                return False
            raise

    def delete(self, key: str) -> bool:
        present = self.exists(key)
        if present:
            self._client.delete_object(Bucket=self.bucket, Key=check_key(key))
        return present

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise InvalidKey(f"prefix must end with '/': {prefix!r}")
        check_key(prefix[:-1])
        count = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if not keys:
                continue
            # A page holds at most 1000 keys, the delete_objects limit.
            resp = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise OSError(f"S3 delete failed for {len(resp['Errors'])} keys, e.g. {first.get('Key')}: {first.get('Message')}")
            count += len(keys)
        return count

    def signed_url(self, key: str, *, tenant: str, base_url: str, ttl_s: int) -> SignedUrl:
        # tenant and base_url are unused: the API checks ownership before signing, and the URL
        # points at the public S3 endpoint, not at the API.
        ttl = max(1, min(int(ttl_s), _MAX_PRESIGN_S))
        now = time.time()
        url = self._public.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=ttl
        )
        return SignedUrl(url=url, expires_at=now + ttl)

    def ping(self) -> None:
        self._client.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket when absent (tests, and setups without compose's minio-init)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _code(e) not in _NOT_FOUND:
                raise
        kwargs = {}
        if self.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            if _code(e) != "BucketAlreadyOwnedByYou":  # a concurrent creator won the race
                raise
