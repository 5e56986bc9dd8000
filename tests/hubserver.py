"""A local server speaking the part of the Hugging Face Hub API that `huggingface_hub`
(snapshot/hf_hub_download, HfApi.repo_info / list_repo_tree) uses, over repositories held as
folders. Point HF_ENDPOINT at `HubServer.url`.

    GET  /api/models/{repo}/revision/{rev}        -> {"id", "sha", "siblings"}
    GET  /api/models/{repo}/tree/{rev}[/{path}]   -> [{"type": "file", "path", "size", "oid", "lfs"?}]
    HEAD /{repo}/resolve/{rev}/{path}             -> X-Repo-Commit, ETag (X-Linked-Etag for LFS files), size
    GET  /{repo}/resolve/{rev}/{path}             -> the bytes (Range supported)

Each repository has one commit (its sha derived from the files), `main` resolves to it.
Requests are counted per path so tests can tell what was downloaded.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_MIN = 10_000  # files at least this big are served as LFS objects (sha256 etags), as the Hub does


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        self.entries = {name: self._entry(name, path.read_bytes()) for name, path in self.files.items()}
        h = hashlib.sha1()
        for name, entry in self.entries.items():
            h.update(name.encode() + b"\0" + entry["oid"].encode())
        self.sha = h.hexdigest()

    @staticmethod
    def _entry(name: str, data: bytes) -> dict:
        item = {"type": "file", "path": name, "size": len(data),
                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if len(data) >= LFS_MIN:
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item

    def entry(self, name: str) -> dict:
        return self.entries[name]


class HubServer:
    """`with HubServer({"org/name": folder, ...}) as hub: ...`; repositories can be added later."""

    def __init__(self, repos: dict[str, Path] | None = None):
        self.repos: dict[str, Repo] = {}
        self.hits: Counter[str] = Counter()
        for repo_id, folder in (repos or {}).items():
            self.add(repo_id, folder)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = Repo(Path(folder))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def downloaded(self, repo_id: str) -> set[str]:
        """Files of `repo_id` whose bytes were served (GET on resolve)."""
        prefix = f"GET {repo_id}/"
        return {k[len(prefix):] for k in self.hits if k.startswith(prefix)}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, status: int = 200):
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, code: str, message: str, head: bool = False):
                self._send(status, json.dumps({"error": message}).encode(),
                           {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                           head=head)

            def _repo(self, parts: list[str]) -> tuple[Repo | None, str, list[str]]:
                repo_id = "/".join(parts[:2])
                return server.repos.get(repo_id), repo_id, parts[2:]

            def _revision_ok(self, repo: Repo, rev: str) -> bool:
                return rev in ("main", repo.sha)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

            def _route(self, head: bool):
                path = urlparse(self.path).path
                parts = [unquote(p) for p in path.strip("/").split("/")]
                if parts[:2] == ["api", "models"]:
                    repo, repo_id, rest = self._repo(parts[2:])
                    if repo is None:
                        return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                    if len(rest) >= 2 and rest[0] == "revision":
                        if not self._revision_ok(repo, rest[1]):
                            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                        server.hits[f"info {repo_id}"] += 1
                        return self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                           "siblings": [{"rfilename": n} for n in repo.files]})
                    if len(rest) >= 2 and rest[0] == "tree":
                        if not self._revision_ok(repo, rest[1]):
                            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                        under = "/".join(rest[2:])
                        server.hits[f"tree {repo_id}"] += 1
                        return self._json([repo.entry(n) for n in repo.files if n.startswith(under)])
                    return self._error(404, "EntryNotFound", path)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, repo_id, rest = self._repo(parts)
                    if repo is None:
                        return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head)
                    rev, name = rest[1], "/".join(rest[2:])
                    if not self._revision_ok(repo, rev):
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                    if name not in repo.files:
                        return self._error(404, "EntryNotFound", f"{name} does not exist", head)
                    data = repo.files[name].read_bytes()
                    entry = repo.entry(name)
                    headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{entry["oid"]}"',
                               "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                    if "lfs" in entry:
                        headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": len(data)})
                    status, rng = 200, self.headers.get("Range")
                    if rng and rng.startswith("bytes="):
                        start = int(rng[6:].split("-")[0] or 0)
                        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                        data, status = data[start:], 206
                    if not head:
                        server.hits[f"GET {repo_id}/{name}"] += 1
                    return self._send(status, data, headers, head=head)
                return self._error(404, "EntryNotFound", path, head)

        return Handler
