"""Webhooks cannot be turned against us (issue 14): every delivery goes through
service/egress.py.

- The full set of non-public destinations is refused at submission, tunnelled and
  special-purpose ranges included (6to4, site-local, documentation, AS112, AMT, PCP/TURN anycast).
- The host is resolved once and the connection goes to exactly the checked address (a name
  that answers a public address and then 127.0.0.1 never reaches loopback), with the Host
  header, TLS SNI and certificate for the hostname.
- Proxies from the environment are never used.
- One total deadline per attempt: a receiver that never answers, trickles its headers or its
  body, or a name that takes long to resolve, ends the attempt at the deadline.
- The answer's body is not read (its status line decides): a receiver that streams forever
  sends little.
- A pool of deliverers with a per-tenant cap: one tenant's stuck receivers do not delay
  another tenant's delivery.

Name resolution and "the internet" are simulated in-process: socket.getaddrinfo answers for
`*.test` names, and connections to the fake public addresses are routed to local servers.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app, render_for_webhook
from service.core.config import Settings
from service.store.base import JobRecord, new_id
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes

SECRET = "whsec-0123456789abcdef"
PUBLIC = "93.184.216.34"  # a public address (the test never really connects to it)
DEADLINE_S = 1.0


# --- local receivers ------------------------------------------------------------------------

class Server:
    """A TCP server on 127.0.0.1; each connection is served by `behaviour(server, conn)`."""

    def __init__(self, behaviour):
        self.behaviour, self.requests, self.sent = behaviour, [], 0
        self.stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            top, _, body = head.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in top.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append((top.decode("latin-1"), body))
            self.behaviour(self, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def send(self, conn, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def close(self):
        self.stopped.set()
        self.sock.close()

    def host_header(self, i: int = 0) -> str:
        return next(line.split(":", 1)[1].strip() for line in self.requests[i][0].split("\r\n")[1:]
                    if line.lower().startswith("host:")) if self.requests else ""


def ok(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def never_answers(server, conn):
    server.stopped.wait(60)


def trickles_headers(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for i in range(300):  # one header byte every 0.2 s: each read is quick, the whole is not
        if server.stopped.wait(0.2):
            return
        server.send(conn, b"a" if i % 20 else b"\r\nX-Slow: ")


def trickles_body(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        if server.stopped.wait(0.2):
            return
        server.send(conn, b"x")


def streams_forever(server, conn):
    """Chunked, as fast as the client reads, up to 64 MB (a bound for the test itself)."""
    server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    while server.sent < 64 << 20 and not server.stopped.is_set():
        server.send(conn, chunk)
    server.send(conn, b"0\r\n\r\n")


def huge_body(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
    block = b"y" * 65536
    while server.sent < 64 << 20 and not server.stopped.is_set():
        server.send(conn, block)


@pytest.fixture
def servers():
    made = []

    def make(behaviour=ok):
        made.append(Server(behaviour))
        return made[-1]

    yield make
    for s in made:
        s.close()


# --- simulated DNS and internet -----------------------------------------------------------------

class Net:
    def __init__(self, monkeypatch):
        self.names: dict[str, object] = {}   # name -> [addresses] or callable(call number) -> [addresses]
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        self.lookups: dict[str, int] = {}
        self.connects: list[tuple[str, int]] = []
        real_gai, real_connect = socket.getaddrinfo, socket.create_connection

        def getaddrinfo(host, port, *args, **kwargs):
            if isinstance(host, bytes):
                host = host.decode()
            if host in self.names:
                self.lookups[host] = self.lookups.get(host, 0) + 1
                answer = self.names[host]
                answer = answer(self.lookups[host]) if callable(answer) else answer
                if isinstance(answer, float):  # a slow resolver
                    time.sleep(answer)
                    answer = [PUBLIC]
                return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                         (a, int(port or 0), 0, 0) if ":" in a else (a, int(port or 0))) for a in answer]
            return real_gai(host, port, *args, **kwargs)

        def create_connection(address, *args, **kwargs):
            self.connects.append((address[0], address[1]))
            return real_connect(self.routes.get((address[0], address[1]), address), *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)

    def public(self, name: str, server: Server, address: str = PUBLIC) -> str:
        """`name` resolves to a public address that is routed to `server`; its URL."""
        self.names[name] = [address]
        self.routes[(address, server.port)] = ("127.0.0.1", server.port)
        return f"http://{name}:{server.port}/hook"


@pytest.fixture
def net(monkeypatch):
    return Net(monkeypatch)


# --- the deliverer on a store with jobs that ask for webhooks ------------------------------------

def context(tmp_path, **overrides):
    settings = Settings(**{"data_dir": tmp_path, "api_keys": KEYS, "redis_url": None, "s3_bucket": None,
                           "webhook_timeout_s": DEADLINE_S, "webhook_retry_base_s": 60, **overrides})
    return build_context(settings)


def hooked_job(ctx, url: str, tenant: str = "alice", outbox: bool = False) -> str:
    job = JobRecord(id=new_id("job"), tenant=tenant, kind="colorize", params={
        "image": "upl_" + "0" * 24, "webhook": {"url": url, "events": ["canceled"], "secret": SECRET}},
        webhook_events=",canceled,")
    ctx.store.create_job(job)
    if outbox:
        ctx.store.request_cancel(job.id)  # -> canceled: the delivery enters the outbox
    return job.id


def deliver_within(ctx, job_id: str, wait_s: float):
    """One attempt in a thread; (finished, state, seconds)."""
    from service.webhooks import WebhookDeliverer

    deliverer = WebhookDeliverer(ctx, render_for_webhook)
    out, began = {}, time.monotonic()
    thread = threading.Thread(target=lambda: out.update(state=deliverer.deliver(job_id, "canceled")), daemon=True)
    thread.start()
    thread.join(wait_s)
    return not thread.is_alive(), out.get("state"), time.monotonic() - began


# --- refused destinations --------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    ctx = build_context(Settings(data_dir=tmp_path_factory.mktemp("egress-api"), api_keys=KEYS, redis_url=None,
                                 s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        r = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")},
                        headers=auth(ALICE))
        client.image = r.json()["id"]
        yield client


def submit(api, url: str):
    return api.post("/v1/colorizations", json={"image": api.image, "webhook": {"url": url, "secret": SECRET}},
                    headers=auth(ALICE))


REFUSED = {  # every one of these is accepted by a check built on ipaddress.is_global & co.
    "6to4-of-loopback": "http://[2002:7f00:1::1]/hook",
    "6to4-of-private-10": "http://[2002:a00:1::1]/hook",
    "6to4-of-metadata-169.254.169.254": "http://[2002:a9fe:a9fe::1]/hook",
    "6to4-relay-anycast": "http://192.88.99.1/hook",
    "ietf-protocol-assignment-192.0.0.9": "http://192.0.0.9/hook",
    "ipv6-documentation-3fff": "http://[3fff::1]/hook",
    "ipv6-site-local": "http://[fec0::1]/hook",
    "as112-v4": "http://192.31.196.1/hook",
    "as112-direct-delegation": "http://192.175.48.1/hook",
    "as112-v6": "http://[2620:4f:8000::1]/hook",
    "amt-relay-anycast": "http://192.52.193.1/hook",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_special_purpose_destination_is_refused_at_submission(api, name):
    r = submit(api, REFUSED[name])
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "webhook.url" and "non-public" in r.json()["detail"]


@pytest.mark.parametrize("answer", [["2002:7f00:1::1"], ["192.175.48.1"], [PUBLIC, "2002:a9fe:a9fe::1"]],
                         ids=["name-to-6to4-loopback", "name-to-as112", "public-and-6to4-metadata"])
def test_a_name_resolving_to_a_special_purpose_address_is_refused(api, net, answer):
    net.names["receiver.test"] = answer
    r = submit(api, "http://receiver.test/hook")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook.url", r.text


def test_refusal_does_not_reveal_the_internal_address(api, net):
    net.names["internal.test"] = ["10.20.30.40"]
    r = submit(api, "http://internal.test/hook")
    assert r.status_code == 422 and "10.20.30.40" not in r.text, r.text


# --- connect to exactly the checked address -------------------------------------------------------

def test_dns_rebinding_never_reaches_loopback(tmp_path, net, servers):
    """The name answers a public address first and 127.0.0.1 afterwards: the POST goes to the
    checked (public) address, never to the loopback service, and the name is resolved once."""
    internal, public = servers(), servers()
    net.names["rebind.test"] = lambda n: [PUBLIC] if n == 1 else ["127.0.0.1"]
    net.routes[(PUBLIC, internal.port)] = ("127.0.0.1", public.port)
    ctx = context(tmp_path)
    job_id = hooked_job(ctx, f"http://rebind.test:{internal.port}/hook")
    finished, state, _ = deliver_within(ctx, job_id, 10)
    assert finished and internal.requests == [], internal.requests
    assert len(public.requests) == 1 and state["status"] == "delivered", state
    assert public.host_header() == f"rebind.test:{internal.port}"  # Host is the name, not the address
    assert net.lookups["rebind.test"] == 1 and (PUBLIC, internal.port) in net.connects


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY", "http_proxy"])
def test_environment_proxies_are_never_used(tmp_path, net, servers, monkeypatch, variable):
    proxy, receiver = servers(), servers()
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
    url = net.public("receiver.test", receiver)
    ctx = context(tmp_path)
    finished, state, _ = deliver_within(ctx, hooked_job(ctx, url), 10)
    assert finished and proxy.requests == [], proxy.requests
    assert len(receiver.requests) == 1 and state["status"] == "delivered", state


def test_tls_goes_to_the_pinned_address_with_sni_and_a_certificate_for_the_name(net):
    """HTTPS to a name pinned to a public address: the handshake carries the name (SNI) and the
    certificate is verified for the name; a certificate for another name is refused."""
    trustme = pytest.importorskip("trustme")
    from service import egress

    ca = trustme.CA()
    names = []

    def tls_server(cert_for: str) -> Server:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(cert_for).configure_cert(ctx)
        ctx.sni_callback = lambda sock, name, _ctx: names.append(name)
        server = Server(ok)
        plain = server._serve

        def serve(conn):
            try:
                plain(ctx.wrap_socket(conn, server_side=True))
            except (ssl.SSLError, OSError):
                pass

        server._serve = serve
        return server

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    policy = egress.EgressPolicy(timeout_s=5, ssl_context=client_ctx)
    good = tls_server("hook.test")
    net.names["hook.test"] = [PUBLIC]
    net.routes[(PUBLIC, good.port)] = ("127.0.0.1", good.port)
    r = egress.request("POST", f"https://hook.test:{good.port}/x", policy=policy, content=b"{}")
    assert r.status_code == 200 and r.address == PUBLIC and names == ["hook.test"]
    assert good.host_header() == f"hook.test:{good.port}"
    bad = tls_server("other.test")
    net.routes[(PUBLIC, bad.port)] = ("127.0.0.1", bad.port)
    with pytest.raises(egress.EgressError):
        egress.request("POST", f"https://hook.test:{bad.port}/x", policy=policy, content=b"{}")
    good.close(), bad.close()


# --- one total deadline, bounded reads --------------------------------------------------------------

@pytest.mark.parametrize("behaviour", [never_answers, trickles_headers], ids=["never-answers", "trickles-headers"])
def test_one_deadline_per_attempt(tmp_path, net, servers, behaviour):
    receiver = servers(behaviour)
    ctx = context(tmp_path)
    finished, state, seconds = deliver_within(ctx, hooked_job(ctx, net.public("slow.test", receiver)), 6)
    assert finished, f"the attempt was still running after {seconds:.1f} s (deadline {DEADLINE_S} s)"
    assert state["status"] == "retrying" and state["last_status_code"] is None and "deadline" in state["last_error"]


def test_a_slow_resolver_counts_against_the_deadline(tmp_path, net):
    net.names["slowdns.test"] = 8.0  # the resolver answers after 8 s
    ctx = context(tmp_path)
    finished, state, seconds = deliver_within(ctx, hooked_job(ctx, "http://slowdns.test/hook"), 5)
    assert finished, f"still resolving after {seconds:.1f} s"
    assert state["status"] == "retrying" and "resolve" in state["last_error"]


@pytest.mark.parametrize("behaviour", [streams_forever, huge_body, trickles_body],
                         ids=["streams-forever", "64-mb-body", "trickles-its-body"])
def test_the_answers_body_is_not_read(tmp_path, net, servers, behaviour):
    """The status line is the receiver's answer: the delivery is recorded as soon as it arrives
    and the connection is closed; the receiver gets to push what the socket buffers hold."""
    receiver = servers(behaviour)
    ctx = context(tmp_path)
    finished, state, seconds = deliver_within(ctx, hooked_job(ctx, net.public("big.test", receiver)), 10)
    assert finished and state["status"] == "delivered" and state["last_status_code"] == 200, (state, seconds)
    time.sleep(0.2)
    assert receiver.sent < 8 << 20, receiver.sent


def test_egress_bodies_are_bounded_and_never_silently_cut(net, servers):
    """For callers that read bodies (URL inputs): `request` stops at max_response_bytes and
    says so; a close-delimited body that the deadline cuts is an error, not a short body."""
    from service import egress

    policy = egress.EgressPolicy(timeout_s=DEADLINE_S, max_response_bytes=5000)
    big = servers(huge_body)
    r = egress.request("GET", net.public("big.test", big), policy=policy)
    assert r.status_code == 200 and len(r.body) == 5000 and r.truncated and r.body == b"y" * 5000

    def close_delimited_trickle(server, conn):
        server.send(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(100):
            if server.stopped.wait(0.1):
                return
            server.send(conn, b"z")

    slow = servers(close_delimited_trickle)
    with pytest.raises(egress.EgressError, match="deadline"):
        egress.request("GET", net.public("slow.test", slow), policy=policy)


# --- one tenant's slow receivers do not delay another's delivery -----------------------------------

def test_a_tenants_stuck_receivers_do_not_delay_another_tenants_delivery(tmp_path, net, servers):
    from service.webhooks import WebhookDeliverer

    stuck, quick = servers(never_answers), servers(ok)
    ctx = context(tmp_path, webhook_timeout_s=8.0)
    for _ in range(6):  # alice's six deliveries are due first
        hooked_job(ctx, net.public("stuck.test", stuck), "alice", outbox=True)
    time.sleep(0.05)
    bob_job = hooked_job(ctx, net.public("quick.test", quick), "bob", outbox=True)
    deliverer = WebhookDeliverer(ctx, render_for_webhook, interval_s=0.05)
    deliverer.start()
    try:
        began, state = time.monotonic(), None
        while time.monotonic() - began < 6:
            state = (ctx.store.get_job(bob_job).webhook_deliveries or {}).get("canceled")
            if state and state.get("status") == "delivered":
                break
            time.sleep(0.05)
        waited = time.monotonic() - began
    finally:
        deliverer.stop()
    assert state and state["status"] == "delivered", f"bob's delivery not made after {waited:.1f} s: {state}"
    assert waited < 2.0, waited  # alice's receivers hold 8 s each: bob did not queue behind them
    assert 1 <= len(stuck.requests) <= ctx.settings.webhook_tenant_concurrency, len(stuck.requests)
