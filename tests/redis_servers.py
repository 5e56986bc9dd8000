"""Private redis-server processes for tests: a TLS one with an ACL user, and a Sentinel set
(one primary, one replica, three sentinels), each on free private ports in its own directory."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import free_port

MASTER = "visionjobs"


class Server:
    """One redis-server (or sentinel) process started from a config file."""

    def __init__(self, workdir: Path, name: str, lines: list[str], *, sentinel: bool = False,
                 client_kwargs: dict | None = None, port: int | None = None):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.sentinel = name, sentinel
        self.port = port or free_port()
        self.client_kwargs = client_kwargs or {}
        self.conf = self.dir / "redis.conf"
        self.conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
                                        f"logfile {self.dir / 'redis.log'}", *lines]) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5, retry=Retry(NoBackoff(), 0),
                           **{**self.client_kwargs, **kw})

    def start(self) -> None:
        args = ["redis-server", str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError, redis.AuthenticationError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


class SentinelSet:
    """One primary (AOF everysec), one replica, three sentinels (quorum 2, 1 s down-after)."""

    def __init__(self, workdir: Path, *, down_after_ms: int = 1000):
        persist = ["appendonly yes", "appendfsync everysec", 'save ""', "maxmemory-policy noeviction"]
        self.primary = Server(workdir, "primary", persist)
        self.replica = Server(workdir, "replica", persist + [f"replicaof 127.0.0.1 {self.primary.port}"])
        self.sentinels = [Server(workdir, f"sentinel{i}", [
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2",
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
            f"sentinel failover-timeout {MASTER} 10000",
            f"sentinel parallel-syncs {MASTER} 1"], sentinel=True) for i in range(3)]
        self.wait_synced()
        self.wait_sentinels_know_replica()

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def wait_synced(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.replica.client().info("replication")
            if info.get("master_link_status") == "up":
                return
            time.sleep(0.1)
        raise TimeoutError("replica never synced")

    def wait_sentinels_know_replica(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.client().sentinel_slaves(MASTER) and
                   s.client().sentinel_master(MASTER).get("num-other-sentinels", 0) >= 2 for s in self.sentinels):
                return
            time.sleep(0.2)
        raise TimeoutError("sentinels never saw the replica and each other")

    def current_primary_port(self) -> int:
        return int(self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)[1])

    def stop(self) -> None:
        for s in [*self.sentinels, self.replica, self.primary]:
            s.stop()


def tls_server(workdir: Path, ca, *, user: str, password: str) -> Server:
    """A TLS-only redis-server asking clients for a certificate of `ca`, with one ACL user and
    the default user off."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {}
    for name, blob in {"server.pem": cert.cert_chain_pems[0].bytes(), "server.key": cert.private_key_pem.bytes(),
                       "ca.pem": ca.cert_pem.bytes()}.items():
        paths[name] = workdir / name
        paths[name].write_bytes(blob)
    client = ca.issue_cert("visionjobs-client")
    paths["client.pem"], paths["client.key"] = workdir / "client.pem", workdir / "client.key"
    paths["client.pem"].write_bytes(client.cert_chain_pems[0].bytes())
    paths["client.key"].write_bytes(client.private_key_pem.bytes())
    port = free_port()
    server = Server(workdir, "tls", [
        "port 0", f"tls-port {port}", f"tls-cert-file {paths['server.pem']}", f"tls-key-file {paths['server.key']}",
        f"tls-ca-cert-file {paths['ca.pem']}", "tls-auth-clients yes", 'save ""', "appendonly no",
        "user default off", f"user {user} on >{password} ~* &* +@all"],
        client_kwargs=dict(ssl=True, ssl_ca_certs=str(paths["ca.pem"]), ssl_certfile=str(paths["client.pem"]),
                           ssl_keyfile=str(paths["client.key"]), username=user, password=password), port=port)
    server.paths = paths
    return server
