"""The 150 crypto assets of the bundled price server, with a demo price feed.

`price_body()` is how every answer for an asset is serialized: once per price
change, never per request.
"""
from __future__ import annotations

import random
import time
from typing import Iterator

import orjson

__all__ = ["ASSETS", "price_body", "random_walk"]

ASSETS: tuple[str, ...] = tuple("""
BTC ETH USDT BNB SOL XRP USDC ADA DOGE TRX TON AVAX SHIB DOT LINK BCH NEAR MATIC LTC ICP
UNI DAI LEO ETC APT XLM OKB STX FIL CRO ATOM HBAR IMX ARB MNT VET INJ OP RNDR GRT
TAO MKR RUNE SUI THETA LDO FTM ALGO SEI FLOKI BSV TIA AAVE FLOW EGLD QNT BEAM AXS SAND
XTZ KCS GALA MANA CHZ NEO ORDI CFX EOS KAVA SNX WLD BTT IOTA XEC ROSE CAKE MINA KLAY
GNO FXS AR PEPE DYDX XDC JASMY ZEC WOO CRV RPL OSMO COMP ONE ZIL ENJ LUNC CKB GMX
HOT QTUM 1INCH BAT IOTX ZRX CELO ENS SUSHI ANKR GLM YFI AUDIO RVN LRC MASK TFUEL OCEAN
SFP BAND KSM JST WAVES ICX DASH SC ONT SKL STORJ UMA CVX API3 AGIX FET BLUR PENDLE JUP
PYTH STRK DYM WIF BONK MEME ALT MANTA XAI PIXEL PORTAL ONDO ENA ETHFI W AEVO
""".split())

assert len(ASSETS) == 150 and len(set(ASSETS)) == 150


def price_body(asset: str, price: float, ts_ms: int, source: str = "sim", seq: int = 0,
               stale: bool = False) -> bytes:
    """The pre-serialized answer for one asset (about 100 bytes)."""
    return orjson.dumps({"asset": asset, "price": float(f"{price:.6g}"), "ts": ts_ms,
                         "source": source, "seq": seq, "quote": "USD", "stale": stale})


def random_walk(seed: int = 1, volatility: float = 0.001) -> Iterator[dict[str, bytes]]:
    """Endless rounds of new prices for every asset, as {asset: body} dicts."""
    rng = random.Random(seed)
    prices = {a: 10 ** rng.uniform(-2, 4.5) for a in ASSETS}
    seq = 0
    while True:
        seq += 1
        now_ms = int(time.time() * 1000)
        for asset in ASSETS:
            prices[asset] *= 1.0 + rng.gauss(0.0, volatility)
        yield {a: price_body(a, p, now_ms, seq=seq) for a, p in prices.items()}
