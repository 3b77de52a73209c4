"""Webhook subscriptions of associates: tiers, the SQLite store, the SSRF
guard and the signatures.

A subscription names an endpoint (an `https://` URL or a UDP `host:port`), a
tier (interval and maximum assets), the assets it receives, its secrets and
its state.  Subscriptions live in the key store's SQLite file, in tables of
their own (`webhook_subscriptions`, `webhook_log`), created when missing, so
an older key store gains them without a migration step.

Signatures follow the Standard Webhooks specification: the secret is
`whsec_` + base64 of random bytes; `webhook-signature` carries one
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per active secret, space
separated, so a receiver keeps verifying while a secret is rotated.  The
`compat` style adds the seeds' `X-Webhook-Signature: sha256=<hex HMAC of the
body>` with the newest secret.
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
from beastnet.serve.keys import KeyStore, KeyStoreError

__all__ = ["DEFAULT_WEBHOOK_TIERS", "MAX_SECRETS", "SECRET_PREFIX", "Endpoint",
           "SubscriptionRules", "WebhookError", "WebhookStore", "WebhookTier", "check_address",
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


# The seeds' tiers.
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id           TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    method       TEXT NOT NULL,          -- 'https' or 'udp'
    tier         TEXT NOT NULL,
    assets       TEXT NOT NULL,          -- JSON array of asset keys
    secrets      TEXT NOT NULL,          -- JSON array of whsec_ secrets, newest first
    style        TEXT NOT NULL DEFAULT 'standard',
    state        TEXT NOT NULL DEFAULT 'active',
    reason       TEXT NOT NULL DEFAULT '',
    label        TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    changed_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_log (
    ts           REAL NOT NULL,          -- UTC seconds, when the attempt ended
    subscription TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    method       TEXT NOT NULL,
    assets       INTEGER NOT NULL,       -- assets carried (UDP: datagrams sent)
    attempt      INTEGER NOT NULL,       -- 1 = first try
    status       INTEGER NOT NULL,       -- HTTP status; 0 = none (UDP, or no answer)
    delivered    INTEGER NOT NULL,       -- 1 = 2xx (UDP: handed to the kernel)
    latency_ms   REAL NOT NULL,
    error        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_log_ts ON webhook_log (ts);
CREATE INDEX IF NOT EXISTS webhook_log_sub ON webhook_log (subscription, ts);
"""

# Delivery-log columns added after the first release, each added by ALTER
# TABLE when an older file lacks it (additive: old rows read as the default).
_LOG_COLUMNS_ADDED = (
    ("asset_list", "TEXT NOT NULL DEFAULT '[]'"),    # JSON array of the assets delivered
    ("prices", "TEXT"),                 # JSON array beside asset_list; NULL = not recorded (UDP)
    ("sources", "TEXT"),                # JSON array of each body's feed source; NULL likewise
)
_LOG_COLUMNS = ("ts", "subscription", "msg_id", "method", "assets", "attempt", "status",
                "delivered", "latency_ms", "error") + tuple(c for c, _ in _LOG_COLUMNS_ADDED)
_LOG_JSON = frozenset(c for c, _ in _LOG_COLUMNS_ADDED)

_COLUMNS = ("id", "endpoint", "method", "tier", "assets", "secrets", "style", "state", "reason",
            "label", "created_at", "changed_at")


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


class WebhookStore(SubscriptionRules):
    """Subscriptions and the delivery log in the key store's SQLite file.
    One connection; calls are serialised by a lock, so threads may share it."""

    def __init__(self, path: str, tiers: Optional[Mapping[str, WebhookTier]] = None,
                 assets: Iterable[str] = (), allow_private: bool = False,
                 timeout_s: float = 5.0) -> None:
        super().__init__(tiers, assets, allow_private)
        self.path = path
        self._own_changes = 0
        # The key store's own connection, lock and error handling, on the same
        # file: subscriptions sit beside the API keys, in tables of their own.
        try:
            self._keys = KeyStore(path, timeout_s=timeout_s)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None
        try:
            self._keys.script(_SCHEMA)
            self._add_log_columns()
        except KeyStoreError as exc:
            self._keys.close()
            raise WebhookError(str(exc)) from None

    def _add_log_columns(self) -> None:
        """The additive migration of an older file's delivery log."""
        for name, decl in _LOG_COLUMNS_ADDED:
            have = {row[1] for row in self._keys.query("PRAGMA table_info(webhook_log)")}
            if name in have:
                continue
            try:
                self._keys.script(f"ALTER TABLE webhook_log ADD COLUMN {name} {decl}")
            except KeyStoreError:
                # Another process starting at the same time may have added it first.
                have = {row[1] for row in self._keys.query("PRAGMA table_info(webhook_log)")}
                if name not in have:
                    raise

    def close(self) -> None:
        self._keys.close()

    def __enter__(self) -> "WebhookStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, args: Iterable = ()) -> List[tuple]:
        try:
            return self._keys.query(sql, args)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None

    def version(self) -> tuple:
        """Changes whenever subscriptions change, here or in another process.
        Not PRAGMA data_version: usage flushes to the same file would change
        it ten times a second."""
        row = self._run("SELECT count(*), COALESCE(max(changed_at), 0), "
                        "COALESCE(sum(length(state) + length(secrets)), 0) "
                        "FROM webhook_subscriptions")[0]
        return (*row, self._own_changes)

    # -- subscriptions -------------------------------------------------------------

    def add(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
            label: str = "", resolve: bool = True) -> dict[str, Any]:
        """Validate and store a subscription; return it (with its first secret)."""
        rec = self.new_record(endpoint, tier, assets, style, label, resolve)
        self._run("INSERT INTO webhook_subscriptions (id, endpoint, method, tier, assets, secrets, "
                  "style, label, created_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (rec["id"], rec["endpoint"], rec["method"], rec["tier"],
                   json.dumps(rec["assets"]), json.dumps(rec["secrets"]), rec["style"],
                   rec["label"], rec["created_at"], rec["changed_at"]))
        self._own_changes += 1
        return self.get(rec["id"])

    def get(self, sub_id: str) -> dict[str, Any]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM webhook_subscriptions WHERE id = ?",
                         (sub_id,))
        if not rows:
            raise WebhookError(f"no subscription {sub_id!r}")
        return self._row(rows[0])

    @staticmethod
    def _row(row: tuple) -> dict[str, Any]:
        out = dict(zip(_COLUMNS, row))
        out["assets"] = json.loads(out["assets"])
        out["secrets"] = json.loads(out["secrets"])
        return out

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM webhook_subscriptions"
        rows = self._run(sql + " WHERE state = ? ORDER BY created_at" if state else
                         sql + " ORDER BY created_at", (state,) if state else ())
        return [self._row(r) for r in rows]

    def set_state(self, sub_id: str, state: str, reason: str = "",
                  only_from: Optional[tuple[str, ...]] = None) -> None:
        """Move a subscription to `state`; `only_from` limits the states it may leave."""
        self.check_state(state)
        sql = "UPDATE webhook_subscriptions SET state = ?, reason = ?, changed_at = ? WHERE id = ?"
        args: list[Any] = [state, reason, time.time(), sub_id]
        if only_from:
            sql += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += list(only_from)
        if not self._run(sql + " RETURNING id", args):
            self.get(sub_id)                # raises when there is no such subscription
            raise WebhookError(f"subscription {sub_id} is not {' or '.join(only_from or ())}")
        self._own_changes += 1

    def remove(self, sub_id: str) -> None:
        if not self._run("DELETE FROM webhook_subscriptions WHERE id = ? RETURNING id", (sub_id,)):
            raise WebhookError(f"no subscription {sub_id!r}")
        self._own_changes += 1

    def rotate_secret(self, sub_id: str) -> str:
        """Add a new secret in front; the newest MAX_SECRETS stay active (each
        delivery is signed with all of them); return the new one."""
        secret, kept = self.rotated(self.get(sub_id)["secrets"])
        self._run("UPDATE webhook_subscriptions SET secrets = ?, changed_at = ? WHERE id = ?",
                  (json.dumps(kept), time.time(), sub_id))
        self._own_changes += 1
        return secret

    def drop_old_secrets(self, sub_id: str) -> None:
        """End a rotation: keep only the newest secret."""
        current = self.get(sub_id)["secrets"]
        self._run("UPDATE webhook_subscriptions SET secrets = ?, changed_at = ? WHERE id = ?",
                  (json.dumps(current[:1]), time.time(), sub_id))
        self._own_changes += 1

    # -- delivery log --------------------------------------------------------------

    def write_log(self, rows: List[tuple]) -> None:
        """Append delivery-log rows (tuples in _LOG_COLUMNS order) in one
        transaction (all or nothing)."""
        try:
            self._keys.insert_many(
                f"INSERT INTO webhook_log ({', '.join(_LOG_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_LOG_COLUMNS))})", rows)
        except KeyStoreError as exc:
            raise WebhookError(f"log write failed: {exc}") from None

    def prune_log(self, older_than_s: float) -> int:
        rows = self._run("DELETE FROM webhook_log WHERE ts < ? RETURNING ts",
                         (time.time() - older_than_s,))
        return len(rows)

    def read_log(self, sub_id: Optional[str] = None, limit: int = 100) -> List[dict[str, Any]]:
        """The newest rows first; asset_list, prices and sources as lists
        (prices and sources None where not recorded)."""
        sql = f"SELECT {', '.join(_LOG_COLUMNS)} FROM webhook_log"
        args: List[Any] = []
        if sub_id:
            sql += " WHERE subscription = ?"
            args.append(sub_id)
        rows = self._run(sql + " ORDER BY ts DESC, rowid DESC LIMIT ?", args + [limit])
        out = []
        for r in rows:
            row = dict(zip(_LOG_COLUMNS, r))
            for name in _LOG_JSON:
                if row[name] is not None:
                    row[name] = json.loads(row[name])
            out.append(row)
        return out
