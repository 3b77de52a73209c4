"""Serving with the six exchange feeds running vs with the simulator, and the
time from a tick leaving the exchange to a WebSocket subscriber of
`beastnet serve` receiving it: one run, the two arms interleaved.

    PYTHONPATH=src python benchmarks/bench_feeds_serving.py [--rounds 3] [--duration 5]

The exchanges: tests/fake_exchange.py's six fakes in a process of their own
(`--fake`), each pushing its documented ticker message for every symbol a
client subscribed, prices walking from the shipped snapshot, at --feed-rate
messages a second in all (default 1,500: the simulator's publication rate,
150 assets x 10 rounds/s, so both arms publish about as often; what the real
ticker channels send for these assets varies with trading and was not
measured from here), with their heartbeats at 1 s.
Arms, each a fresh `beastnet serve` (production profile, keys off, logs at
info): "exchanges" (`--feed exchanges`, the fakes' URLs in a config file)
and "sim" (`--feed sim`, 10 rounds/s).  Throughput: `beastnet load` over HTTP
(GET /v1/<asset>, the 150 assets in turn, its default connections) for
--duration seconds; ratio = exchanges / sim of the median round.  Beside it,
the server's CPU per request over the load run (schedstat of all its threads,
load run's warm-up included) and, before it, the idle server's CPU over
--idle seconds: what the feed alone costs the process.
Latency (exchanges arm, after its load run): a `websockets` client
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

class Serve:
    """A `beastnet serve` process (its own session, stopped by PID)."""

    def __init__(self, args: list[str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-feeds-serve-", suffix=".log")
        argv = [sys.executable, "-m", "beastnet", "serve", "--no-keys", "--udp-port", "0",
                "--http-port", "0", "--admin-port", "0", *args]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(), start_new_session=True)
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def wait_for_exchange_prices(server: Serve, timeout_s: float = 30.0) -> int:
    """Assets served from an exchange (not stale), once most are."""
    deadline = time.monotonic() + timeout_s
    served = 0
    while time.monotonic() < deadline:
        exch = server.stats().get("feed", {}).get("exchanges", {})
        served = sum(h.get("symbols_seen", 0) for h in exch.values())
        if exch and all(h.get("state") == "connected" for h in exch.values()) and served >= 150:
            return served
        time.sleep(0.2)
    return served


def load_http(port: int, duration_s: float, out: Path) -> float:
    argv = [sys.executable, "-m", "beastnet", "load", f"http://127.0.0.1:{port}/v1/",
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


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (sim, exchanges each)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of each load run")
    p.add_argument("--feed-rate", type=float, default=1500.0,
                   help="ticker messages a second from the six fakes together")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds the idle server's CPU is read before each load run")
    p.add_argument("--fake", metavar="LOG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake:
        asyncio.run(run_fakes(args.feed_rate, args.fake))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-feeds-serving-"))
    sent_log = tmp / "sent.jsonl"
    fake = subprocess.Popen([sys.executable, __file__, "--fake", str(sent_log),
                             "--feed-rate", str(args.feed_rate)], stdout=subprocess.PIPE,
                            env=child_env(), text=True, start_new_session=True)
    try:
        assert fake.stdout is not None
        urls = orjson.loads(fake.stdout.readline())
        config = tmp / "exchanges.toml"
        config.write_text("".join(
            f'[feeds.exchanges.{n}]\nws_url = "{ws}"\nrest_url = "{rest}"\nconnect_delay_s = 0\n'
            for n, (ws, rest) in urls.items()))
        arms = {"sim": ["--feed", "sim"],
                "exchanges": ["--feed", "exchanges", "--config", str(config)]}
        print(f"# bench_feeds_serving: {os.cpu_count()} CPUs; HTTP load {args.duration:g} s "
              f"per run, {args.rounds} rounds; fakes at {args.feed_rate:,.0f} msg/s")
        rps: dict[str, list[float]] = {"sim": [], "exchanges": []}
        idle: dict[str, list[float]] = {"sim": [], "exchanges": []}
        cpu: dict[str, list[float]] = {"sim": [], "exchanges": []}
        received: list[tuple[str, str, str, int, str]] = []
        for n in range(args.rounds):
            for arm in ("sim", "exchanges"):
                server = Serve(arms[arm])
                try:
                    note = ""
                    if arm == "exchanges":
                        seen = wait_for_exchange_prices(server)
                        note = f"  symbols seen {seen}"
                    # What the feed costs the serving process with no request
                    # coming: its CPU over --idle seconds.
                    c0, w0 = proc_sched_ns(server.proc.pid), time.monotonic_ns()
                    time.sleep(args.idle)
                    idle_ms_per_s = (proc_sched_ns(server.proc.pid) - c0) / \
                        (time.monotonic_ns() - w0) * 1e3
                    load = os.getloadavg()[0]
                    c0 = proc_sched_ns(server.proc.pid)
                    r = load_http(server.http_port, args.duration, tmp / f"{arm}{n}.json")
                    # over the load run's warm-up and measured seconds alike
                    cpu_us = (proc_sched_ns(server.proc.pid) - c0) / 1e3 / \
                        (r * (args.duration + 1))
                    idle[arm].append(idle_ms_per_s)
                    cpu[arm].append(cpu_us)
                    if arm == "exchanges":
                        exch = server.stats()["feed"]["exchanges"]
                        rate = sum(h.get("msgs_per_s", 0.0) for h in exch.values())
                        note += f"  feed {rate:,.0f} msg/s"
                        if n == 0:
                            received = asyncio.run(subscribe_and_stamp(server.http_port,
                                                                       args.latency_seconds))
                    rps[arm].append(r)
                    print(f"[{n + 1}/{args.rounds}] {arm:<9} {r:>10,.0f} req/s  "
                          f"server CPU {cpu_us:.2f} us/req  idle {idle_ms_per_s:.1f} ms CPU/s  "
                          f"(load average {load:.1f}){note}", flush=True)
                finally:
                    server.stop()
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(30)
    med = {a: sorted(v)[len(v) // 2] for a, v in rps.items()}
    print(f"\nmedian HTTP req/s: sim {med['sim']:,.0f}, exchanges {med['exchanges']:,.0f}: "
          f"exchanges / sim = {med['exchanges'] / med['sim']:.3f}")
    mc = {a: sorted(v)[len(v) // 2] for a, v in cpu.items()}
    mi = {a: sorted(v)[len(v) // 2] for a, v in idle.items()}
    print(f"median server CPU per request: sim {mc['sim']:.2f} us, exchanges "
          f"{mc['exchanges']:.2f} us: sim / exchanges = {mc['sim'] / mc['exchanges']:.3f}")
    print(f"median CPU of the idle server (the feed alone): sim {mi['sim']:.1f} ms/s, "
          f"exchanges {mi['exchanges']:.1f} ms/s")
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
