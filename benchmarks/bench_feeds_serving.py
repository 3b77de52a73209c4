"""Serving with the six exchange feeds running vs with the simulator (server
CPU per request and req/s, paired rounds), and the time from a tick leaving
the exchange to a WebSocket subscriber of `beastnet serve` receiving it.

    PYTHONPATH=src python benchmarks/bench_feeds_serving.py [--blocks 3] [--slices 6]
        [--duration 5] [--design interleaved|fresh] [--rounds 8] [--against TREE]

The exchanges: tests/fake_exchange.py's six fakes in a process of their own
(`--fake`), each pushing its documented ticker message for every symbol a
client subscribed, prices walking from the shipped snapshot, at --feed-rate
messages a second in all, with their heartbeats at 1 s.  The realistic
rate: what the exchanges document bounds only OKX (tickers pushed at most
once per 100 ms per instrument, and only on a change); Coinbase's ticker and
Kraken's (event_trigger "trades", the default) send one message per trade,
Gate.io's and Crypto.com's on change: for these 150 mostly small assets the
trade rate, not a documented cap, sets it, and it was not measured from here.
The default, 1,500 msgs/s over the 294 symbols (~5 a second each), is the
simulator's publication rate (150 assets x 10 rounds/s), so the exchanges
arm publishes at least as often as the baseline: the test is not made
easier by a guessed lower rate (`--feed-rate 3000`: every symbol near OKX's
cap).
Arms, each a `beastnet serve` (production profile, keys off, logs at info):
"sim" (`--feed sim`, 10 rounds/s) and "exchanges" (`--feed exchanges`, the
fakes' URLs in a config file); with --against TREE, also "exchanges@base":
the exchanges arm run from TREE's src (e.g. /work/main, built), for a
before/after in the same run.
Design "interleaved" (the default): in each of --blocks blocks, one server
per arm is started and both stay up; the load then alternates between them,
--slices runs each, the order reversed every other pair (ABBA).  Every run
thus has the same processes on the machine (the fakes pushing to the
exchanges server, which takes its feed in all along, and the simulator's
server walking its prices): only which of the two answers the requests
changes, and the two runs of a pair are seconds apart.  Between fresh
processes the same arm's req/s differs by 15-25 % on this VM (placement,
start-up, the machine's drift), twenty times the effect sought; the blocks
sample that too.  Design "fresh": a new server for every run, rounds of every
arm once (the earlier design; --rounds).
The primary figure is the server's CPU per request: schedstat of every
thread of the serve process over the load run (warm-up included) divided by
the requests serve itself counted meanwhile, so the fakes' CPU and the load
generator's are not in it (in production the exchanges are remote) and the
feed's intake is (the exchanges server takes its feed in during its runs:
the messages it counted are printed per run).  Per pair, sim CPU/req /
exchanges CPU/req (>= 0.98 is the target: serving with the feeds costs at
most 1/0.98 of the simulator's CPU per request); the median of the pairs'
ratios with a bootstrap 95 % interval (the pairs resampled 10,000 times),
and the pooled ratio.  Beside it the same for req/s (exchanges / sim): in
the interleaved design both runs of a pair share the machine with the same
background (the feed's intake is in the sim runs' background too), so the
req/s ratio shows what the feed does to serving inside its own process,
and the CPU ratio what it costs in all.  Also per arm: the idle server's CPU over --idle
seconds before the load runs (what the feed alone costs) and the fakes'
process CPU over the load run (not serve's: reported apart).
Throughput: `beastnet load` over HTTP (GET /v1/<asset>, the 150 assets in
turn, its default connections) for --duration seconds.
Latency (first exchanges round, after its load run): a `websockets` client
subscribed to the 150 assets stamps each price on receipt; the fake stamped
each tick before its send (CLOCK_MONOTONIC, one clock for every process); a
received price is matched to its tick by (exchange, asset, price text).  The
client is Python on the same two cores: its own delay is in the figure.
Every figure is printed with the load average at its start: other work on
the machine moves them.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_DIR, child_env, proc_sched_ns  # noqa: E402

sys.path.insert(0, str(REPO_DIR / "tests"))

import orjson  # noqa: E402

from beastnet.serve.assets import ASSETS, snapshot_prices  # noqa: E402


def _price_text(p: float) -> str:
    """About eight significant digits, never an exponent (as exchanges write)."""
    return f"{p:.{max(2, 7 - math.floor(math.log10(p)))}f}"


# -- the fake exchanges' process ---------------------------------------------------------

async def run_fakes(rate: float, log_path: str) -> None:
    from fake_exchange import FakeExchange, ticker

    from beastnet.serve.feeds.exchanges import DEFAULT_ROUTES, EXCHANGES, exchange_assets

    start = snapshot_prices()
    sent: dict[tuple[str, str, str], int] = {}       # (exchange, asset, price) -> send ns
    fakes: dict[str, Any] = {}
    by_exchange = exchange_assets(DEFAULT_ROUTES)
    asset_of = {n: {EXCHANGES[n].symbol_of(a): a for a in assets}
                for n, assets in by_exchange.items()}
    total_symbols = sum(len(v) for v in by_exchange.values())
    for name in EXCHANGES:
        fake = FakeExchange(name, heartbeat_s=1.0, tick_interval_s=3600.0,
                            reply_deadline_s=5.0, client_silence_s=30.0)
        for symbol, asset in asset_of[name].items():
            fake.ws_prices[symbol] = fake.rest_prices[symbol] = _price_text(start[asset])
        fakes[name] = await fake.start()
    print(orjson.dumps({n: [f.ws_url, f.rest_url] for n, f in fakes.items()}).decode(),
          flush=True)
    walk = dict(start)
    step, i = 0, 0
    # Every 10 ms, the next slice of (exchange, symbol) pairs a client
    # subscribed: --feed-rate messages a second in all, spread evenly.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    per_slice = rate / 100.0
    credit = 0.0
    t_next = time.monotonic()
    while not stop.is_set():
        t_next += 0.01
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        pairs = [(f, ws, s) for f in fakes.values() for ws, syms in f.clients.items()
                 for s in sorted(syms)]
        if not pairs:
            continue
        credit += per_slice
        while credit >= 1.0:
            credit -= 1.0
            fake, ws, symbol = pairs[i % len(pairs)]
            i += 1
            asset = asset_of[fake.name].get(symbol)
            if asset is None:
                continue
            step += 1
            walk[asset] *= 1.0 + 0.0004 * (1 if (step * 7919) % 3 else -1)
            price = _price_text(walk[asset])
            fake.ws_prices[symbol] = fake.rest_prices[symbol] = price
            text = orjson.dumps(ticker(fake.name, symbol, price, time.time())).decode()
            sent[(fake.name, asset, price)] = time.monotonic_ns()
            try:
                await ws.send_str(text)
            except ConnectionError:
                pass
    for fake in fakes.values():
        await fake.stop()
    with open(log_path, "wb") as f:
        for (x, a, p), t in sent.items():
            f.write(orjson.dumps([x, a, p, t]) + b"\n")
    print(f"fake: {total_symbols} symbols, {step:,} ticks sent", file=sys.stderr)


# -- the harness ---------------------------------------------------------------------

# --pin: taskset prefixes. The servers on CPU 0, the load generator and the
# fakes on CPU 1 (what production would have off the box, and the client).
PIN: dict[str, list[str]] = {"serve": [], "client": []}

class Serve:
    """A `beastnet serve` process (its own session, stopped by PID)."""

    def __init__(self, args: list[str], src: Optional[Path] = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-feeds-serve-", suffix=".log")
        argv = [*PIN["serve"], sys.executable, "-m", "beastnet", "serve", "--no-keys",
                "--udp-port", "0",
                "--http-port", "0", "--admin-port", "0", *args]
        env = child_env()
        if src is not None:                   # another tree's beastnet (--against)
            env["PYTHONPATH"] = os.pathsep.join([str(src), env["PYTHONPATH"]])
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.ready = self._wait_ready()
        self.http_port = self.ready["http_port"]
        self.admin_port = self.ready["admin_port"]

    def _wait_ready(self, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in Path(self.log.name).read_bytes().splitlines():
                if line.startswith(b"{") and b'"ready"' in line:
                    entry = orjson.loads(line)
                    if entry.get("event") == "ready":
                        return entry
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = Path(self.log.name).read_text(errors="replace")[-500:]
        self.stop()
        raise SystemExit(f"bench_feeds_serving: serve did not start: {tail}")

    def stats(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/admin/stats",
                                    timeout=5) as r:
            return orjson.loads(r.read())

    def requests(self) -> int:
        """HTTP requests the server has answered or refused, all workers."""
        return int(self.stats()["http"]["totals"]["requests"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def wait_for_exchange_prices(server: Serve, timeout_s: float = 60.0) -> int:
    """Symbols priced by the exchanges, once every stream is live, the start's
    REST prewarm is over (up to ~7 s of requests at Coinbase's pace: in the
    idle or load window it would be counted as serving's cost) and most
    symbols have a price."""
    deadline = time.monotonic() + timeout_s
    served = 0
    while time.monotonic() < deadline:
        exch = server.stats().get("feed", {}).get("exchanges", {})
        served = sum(h.get("symbols_seen", 0) for h in exch.values())
        if exch and all(h.get("state") == "connected" and _prewarmed(n, h)
                        for n, h in exch.items()) and served >= 150:
            return served
        time.sleep(0.2)
    return served


def _prewarmed(name: str, health: dict) -> bool:
    """The health's own word, or (a tree from before it said so) its counts:
    every symbol asked for or skipped; Kraken asks for all in one request."""
    if "prewarmed" in health:
        return bool(health["prewarmed"])
    if name == "kraken":
        return health.get("rest_polls", 0) >= 1 or health.get("prewarm_skipped", 0) > 0
    return health.get("rest_polls", 0) + health.get("prewarm_skipped", 0) >= \
        health.get("symbols", 0)


def load_http(port: int, duration_s: float, out: Path) -> float:
    argv = [*PIN["client"], sys.executable, "-m", "beastnet", "load",
            f"http://127.0.0.1:{port}/v1/",
            "-k", ",".join(ASSETS), "-d", str(duration_s), "--warmup", "1", "-q",
            "--json", str(out)]
    r = subprocess.run(argv, env=child_env(), capture_output=True, text=True,
                       timeout=duration_s + 60)
    if not out.exists():
        raise SystemExit(f"bench_feeds_serving: beastnet load failed: {r.stderr.strip()[-300:]}")
    return float(orjson.loads(out.read_bytes())["result"]["rps"])


async def subscribe_and_stamp(port: int,
                              seconds: float) -> list[tuple[str, str, str, int, str]]:
    """(source, asset, price text, receive ns, kind) of every price pushed for
    `seconds`; kind: "snapshot" (an asset's first frame), "stale" or "tick"."""
    import websockets
    price_re = re.compile(rb'"price":([0-9.eE+-]+)')
    out: list[tuple[str, str, str, int, str]] = []
    seen: set[str] = set()
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream", compression=None,
                                  max_size=1 << 20) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "symbols": list(ASSETS)}).decode())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = await asyncio.wait_for(ws.recv(decode=False), end - time.monotonic())
            except asyncio.TimeoutError:
                break
            t = time.monotonic_ns()
            m = price_re.search(msg)
            if m is None:
                continue
            body = orjson.loads(msg)
            asset = body.get("asset", "")
            # The first frame of each asset is its snapshot: the price in the
            # table when the subscription began, sent by the fake up to a
            # whole per-symbol interval earlier (about 200 ms at 1,500 msgs/s
            # over 294 symbols).  Its "latency" is the price's age, not the
            # path's; the stale checker's republications ("stale": true, or a
            # fallback's remembered price) are the same.  Kept apart.
            kind = "snapshot" if asset not in seen else "stale" if body.get("stale") else "tick"
            seen.add(asset)
            out.append((body.get("source", ""), asset, m.group(1).decode(), t, kind))
    return out


def _norm(price: str) -> str:
    from decimal import Decimal
    return format(Decimal(price).normalize(), "f")


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return float("nan") if n == 0 else s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def bootstrap_median(values: list[float], n: int = 10_000,
                     seed: int = 1) -> tuple[float, float, float]:
    """The median of `values` and a percentile-bootstrap 95 % interval for it
    (the values resampled with replacement `n` times)."""
    rng = random.Random(seed)
    k = len(values)
    meds = sorted(median([values[rng.randrange(k)] for _ in range(k)]) for _ in range(n))
    return median(values), meds[int(0.025 * n)], meds[min(n - 1, int(0.975 * n))]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


def measure(server: Serve, fake_pid: int, duration_s: float,
            out: Path) -> tuple[float, float, float]:
    """One load run against `server`: (req/s the generator saw, the serve
    process's CPU per request it counted in µs, the fakes' CPU in ms/s).
    CPU: serve's own threads (schedstat), over the warm-up and the measured
    seconds alike, divided by the requests serve itself counted meanwhile."""
    c0, f0, q0 = proc_sched_ns(server.proc.pid), proc_sched_ns(fake_pid), server.requests()
    w0 = time.monotonic_ns()
    r = load_http(server.http_port, duration_s, out)
    cpu_ns, fake_ns = proc_sched_ns(server.proc.pid) - c0, proc_sched_ns(fake_pid) - f0
    wall_ns = time.monotonic_ns() - w0
    answered = server.requests() - q0
    return r, cpu_ns / 1e3 / max(1, answered), fake_ns / wall_ns * 1e3


def idle_cpu(servers: list[Serve], seconds: float) -> list[float]:
    """Each server's CPU in ms a second over the same `seconds` of no requests."""
    c0, w0 = [proc_sched_ns(s.proc.pid) for s in servers], time.monotonic_ns()
    time.sleep(seconds)
    wall = time.monotonic_ns() - w0
    return [(proc_sched_ns(s.proc.pid) - c) / wall * 1e3 for s, c in zip(servers, c0)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--design", choices=("interleaved", "concurrent", "fresh"),
                   default="interleaved",
                   help="interleaved (default): both arms' servers up at once, the load "
                        "alternating between them; concurrent: both loaded at once, one "
                        "generator each; fresh: a new server for every run")
    p.add_argument("--blocks", type=int, default=3,
                   help="interleaved: pairs of servers started afresh, one after another")
    p.add_argument("--slices", type=int, default=6,
                   help="interleaved: load runs per arm in each block (ABBA)")
    p.add_argument("--rounds", type=int, default=8,
                   help="fresh: rounds, each arm once a round, the order reversed every "
                        "other round")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of each load run")
    p.add_argument("--feed-rate", type=float, default=1500.0,
                   help="ticker messages a second from the six fakes together")
    p.add_argument("--latency-seconds", type=float, default=10.0,
                   help="seconds of the tick -> subscriber measure (0: none)")
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds the idle servers' CPU is read before the load runs")
    p.add_argument("--against", metavar="TREE", type=Path,
                   help="also run the exchanges arm from TREE/src (built): before/after")
    p.add_argument("--pin", action="store_true",
                   help="servers on CPU 0; load generator and fakes on CPU 1 (taskset)")
    p.add_argument("--fake", metavar="LOG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            p.error("--pin needs two CPUs")
        PIN.update(serve=["taskset", "-c", "0"], client=["taskset", "-c", "1"])
    if args.fake:
        asyncio.run(run_fakes(args.feed_rate, args.fake))
        return 0
    for name in ("blocks", "slices", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-feeds-serving-"))
    sent_log = tmp / "sent.jsonl"
    fake = subprocess.Popen([*PIN["client"], sys.executable, __file__, "--fake", str(sent_log),
                             "--feed-rate", str(args.feed_rate)], stdout=subprocess.PIPE,
                            env=child_env(), text=True, start_new_session=True)
    servers: dict[str, Serve]
    rps: dict[str, list[float]] = {}
    idle: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    fake_cpu: dict[str, list[float]] = {}
    feed_rate: dict[str, list[float]] = {}
    received: list[tuple[str, str, str, int, str]] = []
    try:
        assert fake.stdout is not None
        urls = orjson.loads(fake.stdout.readline())
        config = tmp / "exchanges.toml"
        config.write_text("".join(
            f'[feeds.exchanges.{n}]\nws_url = "{ws}"\nrest_url = "{rest}"\nconnect_delay_s = 0\n'
            for n, (ws, rest) in urls.items()))
        exchanges = ["--feed", "exchanges", "--config", str(config)]
        arms: dict[str, tuple[list[str], Optional[Path]]] = {
            "sim": (["--feed", "sim"], None), "exchanges": (exchanges, None)}
        if args.against is not None:
            arms["exchanges@base"] = (exchanges, args.against.resolve() / "src")
        for store in (rps, idle, cpu, fake_cpu, feed_rate):
            store.update({a: [] for a in arms})
        if args.design == "fresh":
            shape = f"{args.rounds} rounds (ABBA), a fresh server each run"
        else:
            shape = (f"{args.blocks} blocks x {args.slices} runs per arm (ABBA), the arms' "
                     f"servers up together in each block")
        print(f"# bench_feeds_serving: {os.cpu_count()} CPUs; HTTP load {args.duration:g} s "
              f"per run, {shape}; fakes at {args.feed_rate:,.0f} msg/s"
              + ("; servers on CPU 0, load and fakes on CPU 1" if args.pin else "")
              + (f"; base tree {args.against}" if args.against else ""))

        def feed_messages(server: Serve) -> int:
            exch = server.stats()["feed"]["exchanges"]
            return sum(int(h.get("messages", 0)) for h in exch.values())

        def run(arm: str, server: Serve, label: str) -> None:
            nonlocal received
            note = ""
            load = os.getloadavg()[0]
            if arm != "sim":
                m0, t0 = feed_messages(server), time.monotonic()
            r, cpu_us, fake_ms = measure(server, fake.pid, args.duration,
                                         tmp / f"{arm}{len(rps[arm])}.json")
            cpu[arm].append(cpu_us)
            fake_cpu[arm].append(fake_ms)
            rps[arm].append(r)
            if arm != "sim":
                # What serve took in from the fakes during this run: the feed
                # flowed while it served (messages counted by serve itself).
                rate = (feed_messages(server) - m0) / (time.monotonic() - t0)
                feed_rate[arm].append(rate)
                note += f"  feed {rate:,.0f} msg/s in"
                if arm == "exchanges" and not received and args.latency_seconds > 0:
                    received = asyncio.run(subscribe_and_stamp(server.http_port,
                                                               args.latency_seconds))
            print(f"[{label}] {arm:<14} {r:>10,.0f} req/s  server CPU {cpu_us:.3f} us/req  "
                  f"fakes {fake_ms:.0f} ms CPU/s  (load average {load:.1f}){note}", flush=True)

        def run_at_once(servers: dict[str, Serve], order: list[str], label: str) -> None:
            """One load run against each server at the same time (concurrent)."""
            import threading
            load = os.getloadavg()[0]
            done: dict[str, tuple[float, float, float]] = {}
            threads = [threading.Thread(target=lambda a=arm: done.__setitem__(
                a, measure(servers[a], fake.pid, args.duration,
                           tmp / f"{a}{label}.json"))) for arm in order]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(done) != len(order):
                raise SystemExit("bench_feeds_serving: a concurrent load run failed")
            for arm in order:
                r, cpu_us, fake_ms = done[arm]
                rps[arm].append(r)
                cpu[arm].append(cpu_us)
                fake_cpu[arm].append(fake_ms)
                print(f"[{label}] {arm:<14} {r:>10,.0f} req/s  server CPU {cpu_us:.3f} us/req  "
                      f"(at once; load average {load:.1f})", flush=True)

        def start(arm: str) -> Serve:
            server = Serve(*arms[arm])
            if arm != "sim":
                seen = wait_for_exchange_prices(server)
                print(f"  {arm}: {seen} symbols priced by the exchanges", flush=True)
            return server

        if args.design == "fresh":
            for n in range(args.rounds):
                for arm in (list(arms) if n % 2 == 0 else list(reversed(arms))):
                    server = start(arm)
                    try:
                        # What the feed costs the serving process with no
                        # request coming: its CPU over --idle seconds.
                        idle[arm] += idle_cpu([server], args.idle)
                        run(arm, server, f"{n + 1}/{args.rounds}")
                    finally:
                        server.stop()
        else:
            for b in range(args.blocks):
                servers = {}
                try:
                    for arm in arms:
                        servers[arm] = start(arm)
                    for arm, ms in zip(arms, idle_cpu(list(servers.values()), args.idle)):
                        idle[arm].append(ms)
                    print(f"  block {b + 1}: idle servers, ms CPU/s: " + ", ".join(
                        f"{a} {idle[a][-1]:.1f}" for a in arms), flush=True)
                    # One unmeasured run each first: a server's first run after
                    # its start was the slowest of its block (warming up).
                    for arm in arms:
                        load_http(servers[arm].http_port, min(args.duration, 3.0),
                                  tmp / f"warm-{arm}{b}.json")
                    if args.design == "concurrent":
                        for n in range(args.slices):
                            order = list(arms) if (b + n) % 2 == 0 else list(reversed(arms))
                            run_at_once(servers, order, f"{b + 1}.{n + 1}")
                        continue
                    for n in range(args.slices):
                        # ABBA, and each block begins with the other arm.
                        order = list(arms) if (b + n) % 2 == 0 else list(reversed(arms))
                        for arm in order:
                            run(arm, servers[arm], f"{b + 1}.{n + 1}")
                finally:
                    for server in servers.values():
                        server.stop()
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(30)
    print()
    for arm in arms:
        if arm == "sim":
            continue
        # Paired by round (fresh) or by slot (interleaved): the two runs of a
        # pair are seconds apart (interleaved) or a minute at most (fresh).
        cpu_pairs = [s / e for s, e in zip(cpu["sim"], cpu[arm])]
        rps_pairs = [e / s for s, e in zip(rps["sim"], rps[arm])]
        m, lo, hi = bootstrap_median(cpu_pairs)
        print(f"{arm}: server CPU per request, sim / {arm}, by pair: "
              + ", ".join(f"{x:.3f}" for x in cpu_pairs))
        print(f"  median {m:.3f}  (bootstrap 95 % interval {lo:.3f} - {hi:.3f}); pooled "
              f"{sum(cpu['sim']) / sum(cpu[arm]):.3f}")
        m, lo, hi = bootstrap_median(rps_pairs)
        print(f"{arm}: req/s, {arm} / sim, by pair: "
              + ", ".join(f"{x:.3f}" for x in rps_pairs))
        print(f"  median {m:.3f}  (bootstrap 95 % interval {lo:.3f} - {hi:.3f}); pooled "
              f"{sum(rps[arm]) / sum(rps['sim']):.3f}")
    if "exchanges@base" in arms:
        # The change itself: the same feed from the two trees, pair by pair.
        pairs = [b / e for b, e in zip(cpu["exchanges@base"], cpu["exchanges"])]
        m, lo, hi = bootstrap_median(pairs)
        print("server CPU per request, exchanges@base / exchanges, by pair: "
              + ", ".join(f"{x:.3f}" for x in pairs))
        print(f"  median {m:.3f}  (bootstrap 95 % interval {lo:.3f} - {hi:.3f})")
    for arm in arms:
        print(f"{arm}: median server CPU {median(cpu[arm]):.3f} us/req, "
              f"{median(rps[arm]):,.0f} req/s; idle server {median(idle[arm]):.1f} ms CPU/s; "
              f"fakes' process {median(fake_cpu[arm]):.0f} ms CPU/s during the load runs"
              + (f"; feed taken in {min(feed_rate[arm]):,.0f}-{max(feed_rate[arm]):,.0f} msg/s"
                 if feed_rate[arm] else ""))
    if not received:
        return 0
    sent = {}
    for line in sent_log.read_bytes().splitlines():
        x, a, price, t = orjson.loads(line)
        sent[(x, a, _norm(price))] = t
    for kind in ("tick", "snapshot"):
        got = [r for r in received if r[4] == kind]
        lat_us = [(t - sent[k]) / 1e3 for src, a, price, t, _ in got
                  if (k := (src, a, _norm(price))) in sent and t > sent[k]]
        print(f"tick sent by the fake exchange -> WebSocket subscriber of serve ({kind} "
              f"frames): {len(lat_us):,} of {len(got):,} received prices matched; "
              f"p50 {percentile(lat_us, 50):,.0f} us  p99 {percentile(lat_us, 99):,.0f} us  "
              f"max {max(lat_us, default=float('nan')):,.0f} us  "
              f"(load average {os.getloadavg()[0]:.1f})")
    print(f"stale republications received: {sum(r[4] == 'stale' for r in received)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
