"""Webhook subscriptions of associates: tiers, the SQLite store, the SSRF
guard and the signatures.

A subscription names an endpoint (an `https://` URL or a UDP `host:port`), a
tier (interval and maximum assets), the assets it receives, its secrets and
its state.  Subscriptions live in a store (`serve/stores/`: the key store's
SQLite file, or the cluster's Redis); every store checks them with
`SubscriptionRules`.

Signatures follow the Standard Webhooks specification: the secret is
`whsec_` + base64 of random bytes; `webhook-signature` carries one
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per active secret, space
separated, so a receiver keeps verifying while a secret is rotated.  The
`compat` style adds an older, simpler header that many receivers check,
`X-Webhook-Signature: sha256=<hex HMAC of the body>`, with the newest secret.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional
from urllib.parse import urlsplit

from beastnet import BeastnetError

__all__ = ["DEFAULT_WEBHOOK_TIERS", "MAX_SECRETS", "SECRET_PREFIX", "Endpoint",
           "SubscriptionRules", "WebhookError", "WebhookTier", "check_address",
           "new_secret", "parse_endpoint", "public_view", "resolve_endpoint", "sign_headers",
           "webhook_tiers"]

SECRET_PREFIX = "whsec_"
#: Secrets kept during a rotation: the newest and the ones before it.
MAX_SECRETS = 3
SECRET_BYTES = 24
STATES = ("active", "paused", "disabled")
SIGNATURE_STYLES = ("standard", "compat")


class WebhookError(BeastnetError, ValueError):
    """A subscription request is invalid, or the endpoint is refused."""


@dataclass(frozen=True)
class WebhookTier:
    """How often a tier's subscriptions are pushed and how many assets each may hold."""

    name: str
    interval_s: float
    max_assets: int


# The webhook tiers every server offers; a config's [webhook_tiers.NAME] changes or adds them.
DEFAULT_WEBHOOK_TIERS: dict[str, WebhookTier] = {
    "starter": WebhookTier("starter", 60.0, 9),
    "standard": WebhookTier("standard", 15.0, 30),
    "professional": WebhookTier("professional", 6.0, 75),
    "enterprise": WebhookTier("enterprise", 3.0, 150),
}


def webhook_tiers(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, WebhookTier]:
    """DEFAULT_WEBHOOK_TIERS with a config's `[webhook_tiers.NAME]` tables applied."""
    tiers = dict(DEFAULT_WEBHOOK_TIERS)
    for name, values in overrides.items():
        base = tiers.get(name, WebhookTier(name, 60.0, 9))
        tiers[name] = WebhookTier(name, float(values.get("interval_s", base.interval_s)),
                                  int(values.get("max_assets", base.max_assets)))
    return tiers


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: the method and where deliveries go."""

    method: str                         # "https" or "udp"
    host: str
    port: int
    url: str                            # the https URL, or "udp://host:port"


def parse_endpoint(endpoint: str) -> Endpoint:
    """`https://host[:port]/path` or `udp://host:port` (also bare `host:port`
    for UDP).  Raises WebhookError naming what is wrong."""
    if not endpoint or len(endpoint) > 2048 or not endpoint.isascii() or not endpoint.isprintable() \
            or any(c.isspace() for c in endpoint):
        raise WebhookError("the endpoint must be 1-2048 printable ASCII characters without spaces")
    text = endpoint if "://" in endpoint else "udp://" + endpoint
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise WebhookError(f"endpoint {endpoint!r}: {exc}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "udp"):
        raise WebhookError(f"endpoint {endpoint!r}: the scheme must be https or udp "
                           f"(plain http would send prices and signatures in clear)")
    if not host:
        raise WebhookError(f"endpoint {endpoint!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError(f"endpoint {endpoint!r}: credentials in the URL are refused")
    if parts.scheme == "udp":
        if port is None or port == 0:
            raise WebhookError(f"endpoint {endpoint!r}: a UDP endpoint needs a port 1-65535")
        if parts.path or parts.query or parts.fragment:
            raise WebhookError(f"endpoint {endpoint!r}: a UDP endpoint is host:port only")
        return Endpoint("udp", host, port, f"udp://{_host_port(host, port)}")
    if port == 0:
        raise WebhookError(f"endpoint {endpoint!r}: port 0")
    if parts.fragment:
        raise WebhookError(f"endpoint {endpoint!r}: a fragment is never sent; leave it out")
    return Endpoint("https", host, port or 443, text)


def public_view(sub: dict[str, Any]) -> dict[str, Any]:
    """A subscription without its secrets (their count stays): what lists show."""
    out = {k: v for k, v in sub.items() if k != "secrets"}
    out["secrets"] = len(sub["secrets"])
    return out


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# NAT64 (RFC 6052): the well-known prefix carries an IPv4 address in its
# last 32 bits; the local-use prefix (RFC 8215) is never global.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def _reached_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address delivers to, where it embeds one a
    router or the kernel unwraps: IPv4-mapped (::ffff:a.b.c.d), 6to4
    (2002:AABB:CCDD::/48, RFC 3056) and NAT64's well-known prefix."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_address(address: str, allow_private: bool) -> None:
    """Refuse (WebhookError) an address a webhook must not reach: loopback,
    private, link-local, multicast, reserved or unspecified, unless
    `allow_private`.  An IPv6 address embedding an IPv4 one (IPv4-mapped,
    6to4, NAT64) is judged by that IPv4 address: 2002:7f00:1:: reaches
    127.0.0.1 through a 6to4 relay and is refused as loopback."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = \
        ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _reached_ipv4(ip) or ip
    if allow_private:
        return
    if (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved or not ip.is_global):
        raise WebhookError(f"address {address} is loopback, private, link-local, multicast or "
                           f"unspecified: refused "
                           f"(allowed by webhooks_allow_private, --allow-private)")


def resolve_endpoint(host: str, port: int, allow_private: bool,
                     socktype: int = socket.SOCK_STREAM) -> list[tuple[int, str]]:
    """Every (family, address) `host` resolves to, each checked by
    check_address: one refused address refuses the endpoint (a name that
    resolves to a public and a private address is how rebinding starts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise WebhookError(f"host {host!r} does not resolve: {reason}") from None
    out: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        check_address(address, allow_private)
        if (family, address) not in out:
            out.append((family, address))
    return out


def new_secret() -> str:
    """A fresh `whsec_` secret: 24 random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _secret_key(secret: str) -> bytes:
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def sign_headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes,
                 style: str = "standard") -> dict[str, str]:
    """The signature headers of one delivery: `webhook-id`,
    `webhook-timestamp`, and `webhook-signature` with one `v1,` signature per
    secret (newest first); with style "compat" also `X-Webhook-Signature`."""
    keys = [_secret_key(s) for s in secrets_]
    signed = f"{msg_id}.{timestamp}.".encode() + body
    sigs = " ".join("v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
                    for k in keys)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sigs}
    if style == "compat":
        headers["X-Webhook-Signature"] = "sha256=" + hmac.new(keys[0], body,
                                                             hashlib.sha256).hexdigest()
    return headers


class SubscriptionRules:
    """What every subscription store checks, whatever holds the rows: the
    tiers, the assets, the SSRF guard; and the record a new one starts as."""

    def __init__(self, tiers: Optional[Mapping[str, WebhookTier]] = None,
                 assets: Iterable[str] = (), allow_private: bool = False) -> None:
        self.tiers = dict(tiers or DEFAULT_WEBHOOK_TIERS)
        self.assets = frozenset(assets)
        self.allow_private = allow_private

    def tier(self, name: str) -> WebhookTier:
        try:
            return self.tiers[name]
        except KeyError:
            raise WebhookError(f"unknown tier {name!r} (known: {', '.join(self.tiers)})") from None

    def check_assets(self, tier: WebhookTier, assets: list[str]) -> list[str]:
        if not assets:
            raise WebhookError("give at least one asset")
        unique = list(dict.fromkeys(assets))
        if len(unique) != len(assets):
            raise WebhookError("an asset is listed twice")
        if self.assets:
            unknown = [a for a in assets if a not in self.assets]
            if unknown:
                raise WebhookError(f"unknown asset {unknown[0]!r}")
        if len(assets) > tier.max_assets:
            raise WebhookError(f"tier {tier.name} allows {tier.max_assets} assets, "
                               f"{len(assets)} given")
        return unique

    def new_record(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
                   label: str = "", resolve: bool = True) -> dict[str, Any]:
        """Validate a subscription request; the full record (a new id and
        first secret, state active) for the store to keep."""
        ep = parse_endpoint(endpoint)
        t = self.tier(tier)
        assets = self.check_assets(t, assets)
        if style not in SIGNATURE_STYLES:
            raise WebhookError(f"signature style must be one of {', '.join(SIGNATURE_STYLES)}")
        if len(label) > 200 or not label.isprintable():
            raise WebhookError("a label is at most 200 printable characters")
        if resolve:
            resolve_endpoint(ep.host, ep.port, self.allow_private,
                             socket.SOCK_DGRAM if ep.method == "udp" else socket.SOCK_STREAM)
        now = time.time()
        return {"id": "sub_" + secrets.token_urlsafe(12), "endpoint": ep.url,
                "method": ep.method, "tier": t.name, "assets": assets, "secrets": [new_secret()],
                "style": style, "state": "active", "reason": "", "label": label,
                "created_at": now, "changed_at": now}

    @staticmethod
    def check_state(state: str) -> None:
        if state not in STATES:
            raise WebhookError(f"state must be one of {', '.join(STATES)}")

    @staticmethod
    def rotated(current: list[str]) -> tuple[str, list[str]]:
        """A new secret, and the list it heads: the newest MAX_SECRETS."""
        secret = new_secret()
        return secret, [secret] + current[:MAX_SECRETS - 1]

    # A store that keeps the secrets as one field gives `get` and
    # `_set_secrets(sub_id, secrets)`; these two then come for free.
    def rotate_secret(self, sub_id: str) -> str:
        """Add a new secret in front (the newest MAX_SECRETS stay active); return it."""
        secret, kept = self.rotated(self.get(sub_id)["secrets"])  # type: ignore[attr-defined]
        self._set_secrets(sub_id, kept)  # type: ignore[attr-defined]
        return secret

    def drop_old_secrets(self, sub_id: str) -> None:
        """End a rotation: keep only the newest secret."""
        self._set_secrets(sub_id,  # type: ignore[attr-defined]
                          self.get(sub_id)["secrets"][:1])  # type: ignore[attr-defined]


