"""A local S3-compatible server for tests: moto's WSGI app behind a SigV4 presign check.

moto 5 does not verify presigned-URL signatures (it serves any `?X-Amz-Signature=...`), so the
server wraps moto's app in a SigV4 query-signature check, as S3 and MinIO do. That is what
lets the tests prove a URL is bound to the host it was signed for.
"""
from __future__ import annotations

import hmac
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY, SECRET_KEY, REGION = "visionjobs-test", "visionjobs-test-secret", "us-east-1"


class PresignVerifier:
    """WSGI middleware: 403 for a presigned request whose SigV4 signature or expiry is wrong."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" in query and not self._valid(environ, query):
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<Error><Code>SignatureDoesNotMatch</Code></Error>"]
        return self.app(environ, start_response)

    @staticmethod
    def _valid(environ, query: str) -> bool:
        parts = [p for p in query.split("&") if p]
        given = [p.partition("=")[2] for p in parts if p.startswith("X-Amz-Signature=")]
        q = {k: unquote(v) for k, _, v in (p.partition("=") for p in parts)}
        try:
            access_key, _, region, service, _ = q["X-Amz-Credential"].split("/")
            signed_at = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            expires = int(q["X-Amz-Expires"])
            headers = {h: environ["HTTP_" + h.upper().replace("-", "_")] for h in q["X-Amz-SignedHeaders"].split(";")}
        except (KeyError, ValueError):
            return False
        if access_key != ACCESS_KEY or len(given) != 1:
            return False
        if datetime.now(timezone.utc) > signed_at + timedelta(seconds=expires):
            return False
        # Recompute over what actually arrived: the Host header, the raw path and the query.
        path = urlsplit(environ.get("RAW_URI") or environ["PATH_INFO"]).path
        unsigned = "&".join(p for p in parts if not p.startswith("X-Amz-Signature="))
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://{environ['HTTP_HOST']}{path}?{unsigned}", headers=headers)
        request.context["timestamp"] = q["X-Amz-Date"]
        auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), service, region, expires=expires)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        return hmac.compare_digest(expected, given[0])


@contextmanager
def s3_server():
    """A moto S3 server on a free port, in a thread of this process; yields the port."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    # Port 0: the OS picks a free port, no race between choosing and binding.
    server = make_server("127.0.0.1", 0, PresignVerifier(DomainDispatcherApplication(create_backend_app)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
