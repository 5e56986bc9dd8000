"""Outbound HTTP(S) to URLs a tenant chose (webhooks now, URL inputs later), hardened against
being turned on us.

- Resolve once, check every address, connect to exactly those: the connection is made by a
  network backend that only knows the checked addresses (no second resolution, so no DNS
  rebinding), while the URL keeps its hostname, so the Host header, TLS SNI and certificate
  verification are all for the hostname.
- Non-public destinations are refused: loopback, private, link-local (cloud metadata), CGNAT,
  benchmarking, documentation, IETF protocol assignments, 6to4 / Teredo / NAT64 and the other
  tunnelled forms (which route to an IPv4 address of someone else's choosing), IPv4-mapped and
  -compatible IPv6 (judged by the IPv4 address they carry), multicast, reserved, unspecified,
  broadcast. An operator's allow list (hosts or CIDR networks) overrides it for known receivers.
- No environment proxies (httpcore is used directly: it never reads HTTP(S)_PROXY/ALL_PROXY),
  no redirects (a caller that wants to follow one calls again, and the new URL is checked).
- One total deadline per attempt, covering resolution, connect, TLS, sending, the response
  head and body: every socket operation is given at most the time left, and a timer shuts the
  socket down when the deadline passes (a trickling peer cannot stretch a handshake either).
- The response body is read up to a byte limit; the rest is never received.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator
from urllib.parse import unquote, urlsplit

import httpcore

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[str, ...] = ()          # hosts or CIDR networks allowed although non-public
    timeout_s: float = 10.0              # total deadline of one attempt
    resolve_timeout_s: float = 5.0       # of which resolving the host may take at most this
    max_response_bytes: int = 4096       # most response body bytes `request` reads
    schemes: tuple[str, ...] = ("https", "http")
    allow_setting: str = "VISIONJOBS_WEBHOOK_ALLOW_HOSTS"  # named in refusals: where operators allow a host
    ssl_context: ssl.SSLContext | None = None  # None: certifi's CAs (a private CA: pass its context)


class EgressRefused(ValueError):
    """The URL or its destination is not allowed (raised before any connection is made)."""


class EgressError(Exception):
    """The attempt failed (resolution, connect, TLS, protocol, deadline); the message names no
    internal detail beyond what the caller's own URL implies."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect only to `addresses` (in order) for `host`."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass
class EgressResponse:
    status_code: int
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool          # the body went on beyond the limit (the rest was not read)
    address: str             # the address the connection went to
    elapsed_s: float = 0.0


# --- which addresses are public -------------------------------------------------------------

_V4_BLOCKED = [(ipaddress.ip_network(net), why) for net, why in [
    ("0.0.0.0/8", "this-network"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local/metadata"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"), ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"), ("192.52.193.0/24", "AMT"), ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"), ("192.175.48.0/24", "AS112"), ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"), ("255.255.255.255/32", "broadcast"),
]]
_V6_BLOCKED = [(ipaddress.ip_network(net), why) for net, why in [
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"), ("64:ff9b:1::/48", "NAT64 local-use"), ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"), ("2001::/23", "IETF protocol assignments"), ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"), ("2620:4f:8000::/48", "AS112"), ("3fff::/20", "documentation"), ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique-local (private)"), ("fe80::/10", "link-local"), ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
]]


def non_public_reason(address: str | Address) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0]) if not isinstance(address, (
        ipaddress.IPv4Address, ipaddress.IPv6Address)) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        inner = non_public_reason(ip.ipv4_mapped)
        return f"IPv4-mapped {inner}" if inner else None
    for net, why in (_V4_BLOCKED if ip.version == 4 else _V6_BLOCKED):
        if ip in net:
            return why
    # belt and braces: whatever the running Python's registry adds later
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback:
        return "special-purpose"
    return None


def _allowed(host: str, addresses: list[Address], allow: tuple[str, ...]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(a.version == net.version and a in net for a in addresses):
            return True
    return False


# --- resolution (once, bounded) -------------------------------------------------------------

def _getaddrinfo(host: str, port: int, timeout_s: float) -> list[str]:
    """getaddrinfo in a thread of its own, waited for at most `timeout_s` (the C resolver has no
    timeout argument; a slow authoritative server must not hold the caller). One thread per
    lookup rather than a shared pool, so one tenant's slow names cannot queue another's."""
    result: dict = {}
    done = threading.Event()

    def run():
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc
        done.set()

    threading.Thread(target=run, name="egress-resolve", daemon=True).start()
    if not done.wait(max(0.0, timeout_s)):
        raise EgressRefused(f"host {host!r} did not resolve within {timeout_s:g} s")
    if "error" in result:
        exc = result["error"]
        if isinstance(exc, socket.gaierror):
            raise EgressRefused(f"host {host!r} does not resolve ({exc.strerror})")
        raise EgressRefused(f"host {host!r} cannot be resolved ({type(exc).__name__})")
    seen: list[str] = []
    for info in result["infos"]:
        address = info[4][0].split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


def resolve(url: str, policy: EgressPolicy) -> Target:
    """Parse, resolve once and check every address; EgressRefused naming why. The Target is
    what `request`/`open_stream` connect to (pass it on to skip a second resolution)."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except (ValueError, UnicodeError) as exc:  # bad port, IPv6 brackets
        raise EgressRefused(f"not a valid URL ({exc})")
    if scheme not in policy.schemes or not host:
        raise EgressRefused(f"must be an {'/'.join(policy.schemes)} URL with a host")
    port = port or (443 if scheme == "https" else 80)
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise EgressRefused(f"not a valid host name ({exc})")
    addresses = _getaddrinfo(host, port, min(policy.resolve_timeout_s, policy.timeout_s))
    ips = [ipaddress.ip_address(a) for a in addresses]
    if not ips:
        raise EgressRefused(f"host {host!r} has no address")
    if not _allowed(host, ips, policy.allow):
        for ip in ips:
            reason = non_public_reason(ip)
            if reason:
                # (the address itself is not shown: it would map the internal network)
                raise EgressRefused(f"host {host!r} resolves to a non-public address ({reason}); operators can "
                                    f"allow it with {policy.allow_setting}")
    # an IPv4-mapped address is connected to over IPv4 (what it means)
    pinned = tuple(str(ip.ipv4_mapped) if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else str(ip)
                   for ip in ips)
    return Target(url, scheme, host, port, pinned)


# --- the connection: pinned addresses, one deadline -----------------------------------------

class _Deadline:
    """The attempt's clock, and a timer that shuts the live socket down when it runs out."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = False  # the timer shut the socket: an end of stream after this is ours, not the peer's
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def bind(self, sock) -> None:
        with self._lock:
            self._sock = sock
        if self.expired():
            self._expire()

    def _expire(self) -> None:
        with self._lock:
            sock = self._sock
            self.fired = True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, clock: _Deadline):
        self._inner, self._clock = inner, clock
        clock.bind(inner.get_extra_info("socket"))

    def _budget(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._clock.left()
        if left <= 0:
            raise error("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._budget(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._clock)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects `target.host` to the checked addresses only; any other host is refused."""

    def __init__(self, target: Target, clock: _Deadline):
        self.target, self.clock = target, clock
        self.connected_to: str | None = None
        self._sync = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if _ascii_host(host) != _ascii_host(self.target.host) or port != self.target.port:
            raise httpcore.ConnectError("connection to another host than the checked one")
        last: Exception = httpcore.ConnectError("no address")
        for address in self.target.addresses:
            left = self.clock.left()
            if left <= 0:
                raise httpcore.ConnectTimeout("the attempt's deadline passed")
            try:
                stream = self._sync.connect_tcp(address, port, min(timeout or left, left), None, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connected_to = address
            return _DeadlineStream(stream, self.clock)
        raise last

    def connect_unix_socket(self, *args, **kwargs):
        raise httpcore.ConnectError("unix sockets are not an egress destination")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Certificate verification against certifi's CAs, for the hostname (never the address)."""
    import certifi

    ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire (IDNA for internationalised names)."""
    host = host.strip("[]").lower()
    return host if host.isascii() else host.encode("idna").decode("ascii")


def _host_header(parts) -> str:
    host = _ascii_host(parts.hostname)
    shown = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    return shown if parts.port in (None, default) else f"{shown}:{parts.port}"


@dataclass
class EgressStream:
    """An open response: status and headers read, the body not yet."""

    status_code: int
    headers: list[tuple[str, str]]
    address: str
    _chunks: Iterator[bytes] = field(repr=False, default=iter(()))
    _clock: _Deadline | None = field(repr=False, default=None)

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives, within the attempt's deadline (EgressError past it)."""
        try:
            for chunk in self._chunks:
                yield chunk
                if self._clock is not None and self._clock.expired():
                    raise EgressError("no complete answer within the deadline")
            if self._clock is not None and self._clock.fired:  # a close-delimited body cut by the deadline
                raise EgressError("no complete answer within the deadline")
        except httpcore.TimeoutException as exc:
            raise EgressError("no complete answer within the deadline") from exc
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise EgressError(_describe(exc, self._clock)) from exc

    def read(self, limit: int) -> tuple[bytes, bool]:
        """At most `limit` body bytes, and whether the body went on beyond them (the rest is not
        received: the connection is closed when the stream is)."""
        out, size = [], 0
        for chunk in self.iter_bytes():
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(out)[:limit], True
        return b"".join(out), False


def _describe(exc: Exception, clock: _Deadline | None) -> str:
    if clock is not None and clock.expired():
        return "no complete answer within the deadline"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + text if text else ''}"


@contextmanager
def open_stream(method: str, url: str, *, policy: EgressPolicy, content: bytes = b"",
                headers: dict[str, str] | None = None, target: Target | None = None) -> Iterator[EgressStream]:
    """Send the request and yield the response once its head arrived; the body is read from the
    yielded EgressStream (all within policy.timeout_s, counted from this call). `target`: an
    already resolved and checked destination for this URL (else it is resolved here).
    Raises EgressRefused (destination not allowed) or EgressError (the attempt failed)."""
    clock = _Deadline(time.monotonic() + policy.timeout_s)
    pool = None
    try:
        target = target if target is not None and target.url == url else resolve(url, policy)
        parts = urlsplit(url)
        sent = {"Host": _host_header(parts), "Accept-Encoding": "identity", "Connection": "close", **(headers or {})}
        if parts.username is not None:  # https://user:pass@host/...: basic auth, as HTTP clients do
            sent["Authorization"] = "Basic " + base64.b64encode(
                f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        host = _ascii_host(parts.hostname)
        shown = f"[{host}]" if ":" in host else host
        clean = parts._replace(netloc=shown if parts.port is None else f"{shown}:{parts.port}").geturl()
        backend = _PinnedBackend(target, clock)
        pool = httpcore.ConnectionPool(ssl_context=policy.ssl_context or _ssl_context(), max_connections=1, retries=0,
                                       network_backend=backend)
        left = max(0.001, clock.left())
        timeouts = {"connect": left, "read": left, "write": left, "pool": left}
        try:
            with pool.stream(method, clean, headers=list(sent.items()), content=content,
                             extensions={"timeout": timeouts}) as response:
                yield EgressStream(response.status, [(k.decode("latin-1"), v.decode("latin-1"))
                                                     for k, v in response.headers],
                                   backend.connected_to or "", response.iter_stream(), clock)
        except httpcore.TimeoutException as exc:
            raise EgressError("no complete answer within the deadline") from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError) as exc:
            raise EgressError(_describe(exc, clock)) from exc
    finally:
        clock.cancel()
        if pool is not None:
            pool.close()


def request(method: str, url: str, *, policy: EgressPolicy, content: bytes = b"",
            headers: dict[str, str] | None = None, target: Target | None = None) -> EgressResponse:
    """One attempt: the status, headers and at most policy.max_response_bytes of the body."""
    began = time.monotonic()
    with open_stream(method, url, policy=policy, content=content, headers=headers, target=target) as response:
        body, truncated = response.read(policy.max_response_bytes)
        return EgressResponse(response.status_code, response.headers, body, truncated, response.address,
                              time.monotonic() - began)
