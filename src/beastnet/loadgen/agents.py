"""Load from many machines: `beastnet agent` processes driven by one
`beastnet load --agents N`, coordinated through Redis or Valkey.

No transport of our own: every message is a Redis list push or pop, every
lease a key with a TTL.

- An **agent** registers ``agent:NAME`` with a lease it renews every quarter
  lease, and pops jobs from ``jobs:NAME``: a clock ping, a run, a release.
- The **coordinator** claims N idle agents (``claim:NAME``, SET NX with the
  same lease, renewed by the coordinator): the claim is the coordinator's
  lease.  An agent that holds a job of a coordinator whose claim lapsed is
  orphaned: it stops its run and exits within a lease and a grace period.
- A run is one job per agent: its share of the load (`split_config`: the
  rate, the sockets or connections and the request count divided), and a
  start time on the agent's own clock, so every agent starts on one barrier.
  Before each run the coordinator measures each agent's clock offset with a
  few pings (the offset of the fastest round trip, known within half of it).
- Each second an agent pushes its timeline row and the latency histogram of
  that second alone (HdrHistogram's compressed encoding) to
  ``run:ID:events``; at the end its whole result, with its exact histogram.
  The merged histogram is the bucket-by-bucket sum, so its counts are the
  sum of the agents' and its percentiles those of the union of the samples.
- An agent whose lease lapses mid-run died: the merged result keeps what its
  rows said it sent and answered, and the verdict says the load was short.

The clock rule: each agent times its own requests (send and receive on one
host's monotonic clock), so request/response latency needs no clock shared
between hosts.  Only the barrier and the start skew use wall clocks, each
corrected by the measured offset.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import nullcontext
from typing import Any, Callable, Optional, Sequence

import orjson

from beastnet.errors import AgentsError, BeastnetError, LoadConfigError, LoadError
from beastnet.loadgen import targets
from beastnet.loadgen._driver import observe_samples, split
from beastnet.loadgen.config import DEFAULT_LEASE_S
from beastnet.loadgen.histogram import Histogram
from beastnet.loadgen.result import LoadResult

__all__ = ["Agent", "AgentsError", "Coordinator", "DEFAULT_LEASE_S", "merge_results",
           "split_config"]

PREFIX = "beastnet:load:"
ORPHAN_GRACE_S = 5.0            # an orphaned agent still running after this exits hard
EVENTS_TTL_S = 3600             # a run's event list outlives a dead coordinator this long
START_LEAD_S = 0.5              # the barrier lies this far (plus two round trips) ahead
CLOCK_PINGS = 3                 # clock pings per agent and run; the fastest one counts
PING_TIMEOUT_S = 2.0

# Row fields that add up across agents (the rest are recomputed or kept).
_ROW_COUNTS = ("sent", "received", "lost", "error_replies", "errors")

CLOCK_RULE = ("each agent times its own requests on its own monotonic clock: request/response "
              "latency needs no clock shared between hosts; the start skew uses wall clocks "
              "corrected by each agent's measured offset (known within half a round trip); "
              "WebSocket delivery latency across hosts includes the offset between the "
              "publisher's clock and the agent's")


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:                 # pragma: no cover - the `cluster` extra is missing
        raise AgentsError("load agents need the redis client: pip install 'beastnet[cluster]'"
                          ) from None
    return redis


def _redacted(url: str) -> str:
    from beastnet.serve.cluster import redacted_url
    return redacted_url(url)


def connect(url: str, timeout_s: float) -> Any:
    """A redis-py client of `url` that answered PING; `AgentsError` in one line if not."""
    redis = _redis_module()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s)
        client.ping()
    except ValueError as exc:
        raise AgentsError(f"--redis {_redacted(url)}: {exc}") from None
    except (redis.RedisError, OSError) as exc:
        raise AgentsError(f"--redis {_redacted(url)}: {exc}") from None
    return client


def _unavailable() -> tuple[type[BaseException], ...]:
    return (_redis_module().RedisError, OSError)


# -- what travels -----------------------------------------------------------------------


def kind_of_config(cfg: Any) -> targets.TargetKind:
    """The target kind a config drives (its mode, and TLS or not)."""
    kind = targets.kind_of(cfg.mode, bool(getattr(cfg, "tls", False)))
    if kind is None:
        raise LoadConfigError(f"no load target of mode {cfg.mode!r}")
    return kind


def config_to_wire(cfg: Any) -> dict[str, Any]:
    """A config as a job carries it: its kind's scheme and every field."""
    return {"scheme": kind_of_config(cfg).scheme, "fields": dataclasses.asdict(cfg)}


def config_from_wire(wire: dict[str, Any]) -> Any:
    """The checked config of `config_to_wire`; `LoadConfigError` if it is not one."""
    try:
        kind = targets.KINDS[wire["scheme"]]
        cls = kind.config_class()
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in wire["fields"].items() if k in names})
    except (KeyError, TypeError, AttributeError) as exc:
        raise LoadConfigError(f"not a load job: {exc}") from None
    cfg.validate()
    return cfg


def split_config(cfg: Any, n: int) -> list[Any]:
    """`cfg` split over `n` agents: the open-loop rate, the sockets (UDP) or
    connections (HTTP, WS) and the request count divided so the shares sum
    to the whole; threads stay per agent (each has its own CPUs).  A seed
    becomes seed + i, so agents do not send the same key sequence."""
    if n < 1:
        raise LoadConfigError(f"--agents must be >= 1, got {n}")
    shares: list[dict[str, Any]] = [{} for _ in range(n)]
    for name in ("sockets", "connections", "max_requests"):
        value = getattr(cfg, name, None)
        if value is None:
            continue
        parts = split(value, [1] * n)
        if min(parts) == 0:
            raise LoadConfigError(f"{name.replace('_', ' ')} {value} cannot be split over "
                                  f"{n} agents: each needs at least one")
        for share, part in zip(shares, parts):
            share[name] = part
    for i, share in enumerate(shares):
        if cfg.rate is not None:
            share["rate"] = cfg.rate / n
        if cfg.seed is not None:
            share["seed"] = cfg.seed + i
    return [dataclasses.replace(cfg, **share) for share in shares]


def histogram_to_wire(h: Histogram) -> dict[str, Any]:
    return {"hdr": h.to_hdr(), "sum_ns": h.sum_ns, "min_ns": h.min_ns, "max_ns": h.max_ns}


def histogram_from_wire(d: dict[str, Any]) -> Histogram:
    return Histogram.from_hdr(d["hdr"], int(d["sum_ns"]), int(d["min_ns"]), int(d["max_ns"]))


def result_to_wire(r: LoadResult) -> dict[str, Any]:
    out = r.to_dict(histogram=False)
    out["histogram"] = histogram_to_wire(r.histogram)
    return out


def result_from_wire(d: dict[str, Any]) -> LoadResult:
    names = {f.name for f in dataclasses.fields(LoadResult)} - {"histogram"}
    fields = {k: v for k, v in d.items() if k in names}
    fields["status_codes"] = {int(k): v for k, v in fields.get("status_codes", {}).items()}
    return LoadResult(histogram=histogram_from_wire(d["histogram"]), **fields)


# -- merging --------------------------------------------------------------------------


def merge_histograms(hists: Sequence[Histogram]) -> Histogram:
    out = Histogram()
    for h in hists:
        out = out.merge(h)
    return out


def merge_rows(rows: Sequence[dict], delta: Histogram) -> dict:
    """One timeline row of several agents' rows of the same second: counts
    summed, percentiles from their merged histogram `delta`."""
    span = max(r["span_s"] for r in rows)
    out: dict[str, Any] = {
        "t": max(r["t"] for r in rows), "t_start": min(r["t_start"] for r in rows),
        "span_s": span, "warmup": all(r["warmup"] for r in rows),
        "partial": any(r["partial"] for r in rows), "agents": len(rows)}
    for name in _ROW_COUNTS:
        out[name] = sum(r.get(name, 0) for r in rows)
    for name, q in (("p50_ns", 50.0), ("p99_ns", 99.0), ("max_ns", 100.0)):
        value = delta.percentile(q)
        out[name] = None if value != value else value
    out["rps"] = out["received"] / span if span else 0.0
    for name in ("sent", "lost", "error_replies", "errors"):
        out[name + "_per_s"] = out[name] / span if span else 0.0
    return out


def _sum_dicts(dicts: Sequence[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _worst(key: str, values: list) -> Any:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return sum(known) if key == "count" else max(known)


def _merge_extra(extras: Sequence[dict]) -> dict:
    """The agents' `extra` merged: counts and rates add, the longest and
    largest values stay the largest, lists join, flags are any.  A summary
    of numbers (WebSocket connect times: p50, p99, max, count) keeps its
    counts summed and the worst agent's value of the rest: percentiles of
    summaries cannot be merged exactly, and the worst is an upper bound."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for e in extras for k in e):
        values = [e[key] for e in extras if key in e and e[key] is not None]
        if not values:
            out[key] = None
        elif all(isinstance(v, bool) for v in values):
            out[key] = any(values)
        elif all(isinstance(v, (int, float)) for v in values):
            largest = key.startswith(("max", "longest")) or key.endswith("_max")
            out[key] = max(values) if largest else sum(values)
        elif all(isinstance(v, dict) and all(isinstance(x, (int, float)) or x is None
                                             for x in v.values()) for v in values):
            out[key] = {k: _worst(k, [v.get(k) for v in values])
                        for k in dict.fromkeys(k for v in values for k in v)}
        elif all(isinstance(v, list) for v in values):
            out[key] = [x for v in values for x in v]
        elif all(isinstance(v, str) for v in values) and len(set(values)) == 1:
            out[key] = values[0]
    return out


def merge_results(parts: Sequence[LoadResult], timeline: list, config: dict) -> LoadResult:
    """One `LoadResult` of runs that went on side by side: counts add, the
    histograms merge exactly, the measured window is the longest of them."""
    return LoadResult(
        mode=parts[0].mode, config=config,
        sent=sum(p.sent for p in parts), received=sum(p.received for p in parts),
        lost=sum(p.lost for p in parts), failed=sum(p.failed for p in parts),
        late=sum(p.late for p in parts), errors=sum(p.errors for p in parts),
        unmatched=sum(p.unmatched for p in parts),
        bad_replies=sum(p.bad_replies for p in parts),
        error_replies=sum(p.error_replies for p in parts),
        unsent=sum(p.unsent for p in parts),
        errors_by_kind=_sum_dicts([p.errors_by_kind for p in parts]),
        status_codes=_sum_dicts([p.status_codes for p in parts]),
        error_bodies=_sum_dicts([p.error_bodies for p in parts]),
        duration_s=max(p.duration_s for p in parts), cpu_s=sum(p.cpu_s for p in parts),
        timeline=timeline, histogram=merge_histograms([p.histogram for p in parts]),
        interrupted=any(p.interrupted for p in parts),
        started_at=min(p.started_at for p in parts if p.started_at) if any(
            p.started_at for p in parts) else 0.0,
        extra=_merge_extra([p.extra for p in parts]))


def merge_timelines(rows: Sequence[Sequence[dict]],
                    deltas: Sequence[Sequence[Histogram]]) -> list[dict]:
    """The merged timeline: row i of every agent that has one, merged."""
    out = []
    for i in range(max((len(r) for r in rows), default=0)):
        have = [a for a in range(len(rows)) if i < len(rows[a])]
        out.append(merge_rows([rows[a][i] for a in have],
                              merge_histograms([deltas[a][i] for a in have])))
    return out


# -- the agent ------------------------------------------------------------------------


def _key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}:{name}"


class Agent:
    """One load agent: registers under `name` at the Redis of `url` and runs
    the jobs it is given until stopped (`serve`)."""

    def __init__(self, url: str, name: Optional[str] = None, lease_s: float = DEFAULT_LEASE_S,
                 log: Callable[[str], None] = lambda line: None) -> None:
        if not lease_s > 0:
            raise LoadConfigError(f"--lease must be > 0 s, got {lease_s:g}")
        self.url = url
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_s = lease_s
        self.log = log
        self.redis: Any = None
        self.owner: Optional[str] = None        # the coordinator whose jobs we run
        self.run_id: Optional[str] = None
        self.fault: Optional[str] = None        # "orphaned" or "redis": why we must exit
        self.stop_requested = threading.Event()
        self._closing = threading.Event()
        self._watchdog: Optional[threading.Thread] = None
        self.push_errors = 0                    # pushes Redis refused
        self.bad_jobs = 0                       # jobs dropped: not JSON, no op, bad fields

    def _info(self, state: str) -> bytes:
        return orjson.dumps({"name": self.name, "host": socket.gethostname(),
                             "pid": os.getpid(), "state": state})

    def register(self) -> None:
        """Connect, take the name (`AgentsError` if a live agent holds it) and
        start renewing the lease."""
        self.redis = connect(self.url, self.lease_s)
        try:
            # Jobs a dead namesake left are not deleted here (a coordinator may
            # already have pushed ours): `_run` drops a run whose claim is gone.
            taken = not self.redis.set(_key("agent", self.name), self._info("idle"),
                                       px=int(self.lease_s * 1000), nx=True)
        except _unavailable() as exc:
            raise AgentsError(f"--redis {_redacted(self.url)}: {exc}") from None
        if taken:
            raise AgentsError(f"an agent named {self.name!r} is already registered at "
                              f"{_redacted(self.url)}: give this one another --name")
        self._watchdog = threading.Thread(target=self._watch, name="beastnet-agent-lease",
                                          daemon=True)
        self._watchdog.start()

    def _interrupt(self, fault: str) -> None:
        """Stop the run under way from the lease thread: SIGINT ends it as
        Ctrl-C would (the partial result is kept), and if the main thread is
        somewhere a signal does not reach, the process exits after a grace."""
        if self.fault is not None:
            return
        self.fault = fault
        self.log(f"beastnet agent {self.name}: "
                 + ("the coordinator's lease lapsed: stopping" if fault == "orphaned"
                    else f"Redis unreachable for {self.lease_s:g} s: stopping"))
        os.kill(os.getpid(), signal.SIGINT)

        def hard_exit() -> None:
            if not self._closing.wait(ORPHAN_GRACE_S):
                os._exit(5)
        threading.Thread(target=hard_exit, daemon=True).start()

    def _watch(self) -> None:
        """The lease thread: renew our lease; while we belong to a
        coordinator, check its claim (its lease) and the run's stop flag."""
        unavailable = _unavailable()
        last_ok = time.monotonic()
        lease_ms = int(self.lease_s * 1000)
        while not self._closing.wait(self.lease_s / 4):
            owner, run_id = self.owner, self.run_id
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(_key("agent", self.name), self._info("busy" if owner else "idle"),
                         px=lease_ms)
                if owner is not None:
                    pipe.get(_key("claim", self.name))
                if run_id is not None:
                    pipe.exists(_key("stop", run_id))
                replies = pipe.execute()
                last_ok = time.monotonic()
            except unavailable:
                if time.monotonic() - last_ok > self.lease_s:
                    self._interrupt("redis")
                continue
            if owner is not None and replies[1] != owner.encode():
                self._interrupt("orphaned")
            if run_id is not None and replies[-1]:
                self.stop_requested.set()

    def serve(self) -> str:
        """Register, then run jobs until stopped.  Returns why it stopped:
        "interrupted" (Ctrl-C, SIGTERM), "orphaned" (the coordinator of the
        job under way vanished) or "redis" (unreachable for a lease)."""
        self.register()
        self.log(f"beastnet agent {self.name}: registered at {_redacted(self.url)}, "
                 "waiting for work")
        unavailable = _unavailable()
        last_ok = time.monotonic()
        try:
            while self.fault is None:
                try:
                    item = self.redis.blpop([_key("jobs", self.name)], timeout=1)
                    last_ok = time.monotonic()
                except unavailable:
                    if time.monotonic() - last_ok > self.lease_s:
                        self.fault = "redis"
                        break
                    time.sleep(0.2)
                    continue
                if item is not None:
                    self._handle(item[1])
            return self.fault
        except KeyboardInterrupt:
            return self.fault or "interrupted"
        finally:
            self._closing.set()
            try:
                self.redis.delete(_key("agent", self.name), _key("jobs", self.name))
            except unavailable:
                pass

    def _push(self, key: str, message: dict) -> bool:
        """RPUSH `message` to `key` (with a TTL); False, counted, if Redis
        refused: the lease thread decides when Redis is gone for good."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(key, orjson.dumps(message))
            pipe.expire(key, EVENTS_TTL_S)
            pipe.execute()
        except _unavailable():
            self.push_errors += 1
            return False
        return True

    def _handle(self, raw: bytes) -> None:
        """One job; one that is not a job is logged and dropped (counted)."""
        try:
            job = orjson.loads(raw)
            op = job["op"]
            if op == "ping":
                self._push(str(job["reply"]), {"agent": self.name, "t": time.time()})
            elif op == "release":
                self.owner = self.run_id = None
            elif op == "run":
                self._run(job)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.bad_jobs += 1
            self.log(f"beastnet agent {self.name}: dropped a job that is not one ({exc}): "
                     f"{raw[:80]!r}")

    def _run(self, job: dict) -> None:
        events, start_at = str(job["events"]), float(job["start_at"])
        coordinator = str(job["coordinator"])
        try:
            holder = self.redis.get(_key("claim", self.name))
        except _unavailable():
            holder = None
        if holder != coordinator.encode():
            # A job of a coordinator that no longer holds us (left queued by
            # a dead one): running it would orphan us at once.
            self.log(f"beastnet agent {self.name}: dropped run {job['run']}: its coordinator "
                     "no longer holds this agent")
            return
        self.owner, self.run_id = coordinator, str(job["run"])
        self.stop_requested.clear()
        try:
            cfg = config_from_wire(job["config"])
        except LoadConfigError as exc:
            self._push(events, {"agent": self.name, "type": "error", "message": str(exc)})
            return
        # The barrier, on our own clock (the coordinator corrected it by our offset).
        while (wait := start_at - time.time()) > 0 and self.fault is None:
            time.sleep(min(wait, 0.05))
        self.log(f"beastnet agent {self.name}: run {self.run_id}: "
                 + targets.describe({"mode": cfg.mode, "config": cfg.to_dict()}))
        stream = job.get("stream", True)

        def on_sample(row: dict, delta: Histogram) -> None:
            self._push(events, {"agent": self.name, "type": "row", "row": row,
                                "histogram": histogram_to_wire(delta)})
        runner = targets.KINDS[job["config"]["scheme"]].run_function()
        try:
            with observe_samples(on_sample) if stream else nullcontext():
                result = runner(cfg, progress=None,
                                stop_when=lambda row: self.stop_requested.is_set())
        except (BeastnetError, OSError, ValueError) as exc:
            self._push(events, {"agent": self.name, "type": "error", "message": str(exc)})
            return
        result.extra["agent_push_errors"] = self.push_errors
        self._push(events, {"agent": self.name, "type": "result",
                            "result": result_to_wire(result)})
        self.log(f"beastnet agent {self.name}: run {self.run_id} done: {result.sent:,} sent, "
                 f"{result.received:,} answered")


# -- the coordinator ------------------------------------------------------------------


@dataclasses.dataclass
class _AgentRun:
    """One agent's part of one run, as its events arrive."""

    name: str
    offset_s: float
    rtt_s: float
    rows: list = dataclasses.field(default_factory=list)
    deltas: list = dataclasses.field(default_factory=list)
    result: Optional[LoadResult] = None
    state: str = "running"              # done, died, error, silent, abandoned
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def partial(self, cfg: Any) -> LoadResult:
        """What the rows of an agent that never sent its result say it did
        (the measured seconds only); its histogram is the sum of its rows'
        (exact counts; min and max within one bucket)."""
        measured = [i for i, r in enumerate(self.rows) if not r["warmup"]]
        hist = merge_histograms([self.deltas[i] for i in measured])
        tops = [self.rows[i]["max_ns"] for i in measured if self.rows[i]["max_ns"]]
        hist.max_ns = int(max(tops)) if tops else 0
        return LoadResult(
            mode=cfg.mode, config=cfg.to_dict(),
            sent=sum(self.rows[i]["sent"] for i in measured),
            received=sum(self.rows[i]["received"] for i in measured),
            lost=sum(self.rows[i]["lost"] for i in measured),
            error_replies=sum(self.rows[i]["error_replies"] for i in measured),
            errors=sum(self.rows[i]["errors"] for i in measured),
            duration_s=sum(self.rows[i]["span_s"] for i in measured),
            timeline=list(self.rows), histogram=hist)


class Coordinator:
    """Claims `count` agents at the Redis of `url` (waiting up to `wait_s`
    for them to register) and runs loads on them: `run` has the signature of
    the runners, so single runs, ramps and the knee finder use it alike."""

    def __init__(self, url: str, count: int, *, wait_s: float = 10.0,
                 lease_s: float = DEFAULT_LEASE_S, stream: bool = True) -> None:
        if count < 1:
            raise LoadConfigError(f"--agents must be >= 1, got {count}")
        self.url = url
        self.count = count
        self.wait_s = wait_s
        self.lease_s = lease_s
        self.stream = stream
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.redis: Any = None
        self.agents: list[str] = []
        self.info: dict[str, dict] = {}
        self._closing = threading.Event()
        self._lease: Optional[threading.Thread] = None
        self.bad_events = 0             # events dropped: not JSON, unknown agent, bad fields

    def __enter__(self) -> "Coordinator":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect and claim the agents; `AgentsError` if Redis cannot be
        used or fewer than `count` agents are free within `wait_s`."""
        self.redis = connect(self.url, self.lease_s)
        unavailable = _unavailable()
        deadline = time.monotonic() + self.wait_s
        seen = 0
        try:
            while len(self.agents) < self.count:
                names = sorted(k.decode()[len(PREFIX) + len("agent:"):] for k in
                               self.redis.scan_iter(match=_key("agent", "*"), count=1000))
                seen = max(seen, len(names))
                for name in names:
                    if name in self.agents or len(self.agents) >= self.count:
                        continue
                    if self.redis.set(_key("claim", name), self.id,
                                      px=int(self.lease_s * 1000), nx=True):
                        self.agents.append(name)
                if len(self.agents) >= self.count:
                    break
                if time.monotonic() > deadline:
                    raise AgentsError(
                        f"{len(self.agents)} of {self.count} agents free at "
                        f"{_redacted(self.url)} within {self.wait_s:g} s ({seen} registered; "
                        "start more with `beastnet agent --redis URL`)")
                time.sleep(0.1)
            raw = self.redis.mget([_key("agent", n) for n in self.agents])
        except unavailable as exc:
            self.close()
            raise AgentsError(f"--redis {_redacted(self.url)}: {exc}") from None
        except AgentsError:
            self.close()
            raise
        self.info = {n: orjson.loads(r) if r else {} for n, r in zip(self.agents, raw)}
        self._lease = threading.Thread(target=self._renew, name="beastnet-coordinator-lease",
                                       daemon=True)
        self._lease.start()

    def _renew(self) -> None:
        """Our lease is the agents' claims: renewed every quarter lease."""
        unavailable = _unavailable()
        while not self._closing.wait(self.lease_s / 4):
            try:
                pipe = self.redis.pipeline(transaction=False)
                for name in self.agents:
                    pipe.pexpire(_key("claim", name), int(self.lease_s * 1000))
                pipe.execute()
            except unavailable:
                pass                    # the agents see the lease lapse and stop

    def close(self) -> None:
        """Release the agents (they go back to waiting for work)."""
        self._closing.set()
        if self._lease is not None:
            self._lease.join()
        if self.redis is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name in self.agents:
                pipe.rpush(_key("jobs", name), orjson.dumps({"op": "release"}))
                pipe.expire(_key("jobs", name), EVENTS_TTL_S)
            pipe.execute()
            for name in self.agents:
                if self.redis.get(_key("claim", name)) == self.id.encode():
                    self.redis.delete(_key("claim", name))
        except _unavailable():
            pass                        # the claims lapse on their own
        self.agents = []
        self.redis.close()

    def measure_clocks(self) -> dict[str, tuple[float, float]]:
        """(offset s, round trip s) of each agent's wall clock against ours:
        the offset of the fastest of a few pings, right within half its
        round trip."""
        reply = f"{PREFIX}pong:{self.id}:{uuid.uuid4().hex[:8]}"
        best: dict[str, tuple[float, float]] = {}
        for _ in range(CLOCK_PINGS):
            for name in self.agents:
                t0 = time.time()
                self.redis.rpush(_key("jobs", name),
                                 orjson.dumps({"op": "ping", "reply": reply}))
                got = self.redis.blpop([reply], timeout=PING_TIMEOUT_S)
                t1 = time.time()
                if got is None:
                    raise AgentsError(f"agent {name} did not answer a clock ping within "
                                      f"{PING_TIMEOUT_S:g} s")
                t_agent = float(orjson.loads(got[1])["t"])
                rtt = t1 - t0
                if name not in best or rtt < best[name][1]:
                    best[name] = (t_agent - (t0 + t1) / 2, rtt)
        self.redis.delete(reply)
        return best

    def run(self, cfg: Any, progress: Optional[Callable[[dict], None]] = None,
            stop_when: Optional[Callable[[dict], bool]] = None) -> LoadResult:
        """Run `cfg` split over the agents, started on one barrier; the merged
        `LoadResult`, with each agent's row in ``extra["agents"]``."""
        shares = split_config(cfg, len(self.agents))
        try:
            return self._run(cfg, shares, progress, stop_when)
        except _unavailable() as exc:
            raise AgentsError(f"--redis {_redacted(self.url)}: {exc}") from None

    def _run(self, cfg: Any, shares: list, progress: Optional[Callable[[dict], None]],
             stop_when: Optional[Callable[[dict], bool]]) -> LoadResult:
        clocks = self.measure_clocks()
        run_id = uuid.uuid4().hex[:12]
        events, stop = _key("run", run_id), _key("stop", run_id)
        start_at = time.time() + START_LEAD_S + 2 * max(rtt for _, rtt in clocks.values())
        parts = {n: _AgentRun(n, *clocks[n]) for n in self.agents}
        pipe = self.redis.pipeline(transaction=False)
        for name, share in zip(self.agents, shares):
            pipe.rpush(_key("jobs", name), orjson.dumps({
                "op": "run", "run": run_id, "coordinator": self.id, "events": events,
                "config": config_to_wire(share), "stream": self.stream,
                "start_at": start_at + parts[name].offset_s}))
        pipe.execute()
        interrupted = self._collect(parts, events, stop, cfg, start_at, progress, stop_when)
        self.redis.delete(events, stop)
        return self._merge(cfg, shares, parts, interrupted)

    def _collect(self, parts: dict[str, _AgentRun], events: str, stop: str, cfg: Any,
                 start_at: float, progress: Optional[Callable[[dict], None]],
                 stop_when: Optional[Callable[[dict], bool]]) -> bool:
        """Take the agents' events until each sent its result or is gone.
        Returns whether Ctrl-C stopped the run."""
        # As `_driver._wait`: a run never outlives its schedule by more than this.
        deadline = (start_at + cfg.warmup_s + cfg.duration_s + cfg.timeout_ms / 1e3
                    + 10.0 + self.lease_s)
        interrupted = stopped = False
        shown = 0
        next_check = time.monotonic() + self.lease_s / 2
        while not all(p.finished for p in parts.values()):
            try:
                item = self.redis.blpop([events], timeout=0.25)
                if item is not None and not self._take(parts, item[1]):
                    self.bad_events += 1
                elif time.monotonic() >= next_check:
                    # The event list is empty: an agent without a lease now died.
                    next_check = time.monotonic() + self.lease_s / 2
                    running = [p for p in parts.values() if not p.finished]
                    alive = self.redis.exists(*[_key("agent", p.name) for p in running]) \
                        if running else 0
                    if alive < len(running):
                        for p in running:
                            if not self.redis.exists(_key("agent", p.name)):
                                p.state, p.message = "died", "its lease lapsed mid-run"
                if time.time() > deadline:
                    for p in parts.values():
                        if not p.finished:
                            p.state, p.message = "silent", "no result by the run's deadline"
                # Live progress: a second once every running agent reported it.
                counts = [len(p.rows) for p in parts.values() if not p.finished] or \
                    [len(p.rows) for p in parts.values()]
                while shown < min(counts):
                    have = [p for p in parts.values() if shown < len(p.rows)]
                    row = merge_rows([p.rows[shown] for p in have],
                                     merge_histograms([p.deltas[shown] for p in have]))
                    shown += 1
                    if progress is not None:
                        progress(row)
                    if (stop_when is not None and not stopped and not row["warmup"]
                            and stop_when(row)):
                        stopped = True
                        self.redis.set(stop, b"1", ex=EVENTS_TTL_S)
            except KeyboardInterrupt:
                if interrupted:         # a second Ctrl-C: stop waiting
                    for p in parts.values():
                        if not p.finished:
                            p.state, p.message = "abandoned", "Ctrl-C twice"
                    break
                interrupted = True
                self.redis.set(stop, b"1", ex=EVENTS_TTL_S)
        return interrupted

    @staticmethod
    def _take(parts: dict[str, _AgentRun], raw: bytes) -> bool:
        """Apply one event to its agent's part; False (the caller counts it)
        for one that is not an event of this run's agents."""
        try:
            msg = orjson.loads(raw)
            p = parts.get(msg["agent"])
            if p is None or p.finished:
                return False
            if msg["type"] == "row":
                delta = histogram_from_wire(msg["histogram"])
                row = dict(msg["row"])
                for name in ("t", "t_start", "span_s", *_ROW_COUNTS):
                    float(row[name])        # a row the merge can add up
                row["warmup"], row["partial"] = bool(row["warmup"]), bool(row["partial"])
                p.rows.append(row)
                p.deltas.append(delta)
            elif msg["type"] == "result":
                p.result = result_from_wire(msg["result"])
                p.state = "done"
            elif msg["type"] == "error":
                p.state, p.message = "error", str(msg.get("message", ""))
            else:
                return False
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return False
        return True

    def _merge(self, cfg: Any, shares: list, parts: dict[str, _AgentRun],
               interrupted: bool) -> LoadResult:
        runs = [parts[n] for n in self.agents]
        results = [p.result if p.result is not None else p.partial(share)
                   for p, share in zip(runs, shares)]
        if all(p.state == "error" for p in runs):
            raise LoadError(f"every agent failed: {runs[0].name}: {runs[0].message}")
        timeline = merge_timelines([p.rows for p in runs], [p.deltas for p in runs])
        merged = merge_results(results, timeline, cfg.to_dict())
        merged.interrupted = merged.interrupted or interrupted
        if interrupted:
            # The agents stopped on our Ctrl-C, not on an abort threshold.
            merged.extra["stopped_early"] = False
        starts = [r.started_at - p.offset_s for p, r in zip(runs, results) if r.started_at]
        first = min(starts) if starts else 0.0
        rows = []
        for p, r, share in zip(runs, results, shares):
            d = r.to_dict(histogram=True)
            rows.append({
                "name": p.name, "host": self.info.get(p.name, {}).get("host"),
                "pid": self.info.get(p.name, {}).get("pid"), "state": p.state,
                "message": p.message, "clock_offset_ms": p.offset_s * 1e3,
                "clock_rtt_ms": p.rtt_s * 1e3,
                "start_offset_ms": (r.started_at - p.offset_s - first) * 1e3
                if r.started_at else None,
                "rate": share.rate, "sockets": getattr(share, "sockets", None),
                "connections": getattr(share, "connections", None),
                **{k: d[k] for k in ("sent", "received", "lost", "errors", "error_replies",
                                     "rps", "duration_s", "cpu_s", "latency_ns",
                                     "histogram")}})
        merged.extra["agents"] = rows
        merged.extra["start_skew_ms"] = (max(starts) - first) * 1e3 if starts else None
        merged.extra["agents_clock_rule"] = CLOCK_RULE
        merged.extra["agents_bad_events"] = self.bad_events
        merged.extra["agents_short"] = [
            {"name": p.name, "state": p.state, "message": p.message, "sent": r.sent}
            for p, r in zip(runs, results) if p.state != "done"]
        return merged
