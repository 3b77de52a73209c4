"""The admin listener's one route table.

Every admin route is an `AdminRoute` (path, methods, handler) given by a
component (`Component.routes()`); `AdminRoutes` answers them all: 404 for a
path no component registered, 405 with Allow for a method the route does not
take, the admin token for every route that is not `probe`.  The public port
answers the probe routes only (load balancers probe /healthz) and 404 for the
rest: behind a reverse proxy on the same host every client looks local, so
the public port cannot tell an operator from the internet.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs

from beastnet import MissRequest, error_answer

__all__ = ["AdminRoute", "AdminRoutes", "query_args"]


@dataclass(frozen=True)
class AdminRoute:
    """One path of the admin listener."""

    path: str
    methods: tuple[str, ...]
    handler: Callable[[MissRequest], Any]   #: returns an Answer, or an awaitable of one
    probe: bool = False                     #: no token asked, and answered on the public port too


def query_args(request: MissRequest) -> dict[str, str]:
    """The query string's parameters, the last value of each."""
    return {k: v[-1] for k, v in parse_qs(request.query or "").items()}


class AdminRoutes:
    """The route table, and the handlers the engines are given for it."""

    def __init__(self, routes: Iterable[AdminRoute], token: Optional[str]) -> None:
        self.token = token
        self._routes: dict[str, AdminRoute] = {}
        for route in routes:
            if route.path in self._routes:
                raise ValueError(f"admin route {route.path} registered twice")
            self._routes[route.path] = route

    def paths(self) -> list[str]:
        return list(self._routes)

    def _refusal(self, request: MissRequest) -> Any:
        """Why an admin request is refused, or None.  A credential in the query
        string is refused whatever it holds: query strings end up in proxy
        and access logs.  With a token, the request must carry it in
        `Authorization: Bearer` or `X-API-Key` (the engine hands either over
        as `api_key`)."""
        query = parse_qs(request.query or "", keep_blank_values=True)
        if "token" in query or "api_key" in query:
            return error_answer("bad_request", "send the admin token in a header (Authorization: "
                                "Bearer TOKEN, or X-API-Key: TOKEN), not in the URL: query "
                                "strings end up in logs")
        if self.token is None:
            return None                 # loopback only: the listener's address is the guard
        sent = request.api_key or ""
        if not secrets.compare_digest(sent.encode(), self.token.encode()):
            return error_answer("unauthorized", "the admin routes need the token: "
                                                "Authorization: Bearer TOKEN")
        return None

    def on_admin(self, request: MissRequest) -> Any:
        route = self._routes.get(request.path or "")
        if route is None:
            return error_answer("not_found")
        if request.method not in route.methods:
            return error_answer("method_not_allowed", allow=", ".join(route.methods))
        if not route.probe:
            refused = self._refusal(request)
            if refused is not None:
                return refused
        return route.handler(request)

    def on_public(self, request: MissRequest) -> Any:
        route = self._routes.get(request.path or "")
        if route is None or not route.probe:
            return error_answer("not_found")
        if request.method not in route.methods:
            return error_answer("method_not_allowed", allow=", ".join(route.methods))
        return route.handler(request)
