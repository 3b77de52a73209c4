"""The 150 crypto assets of the bundled price server, with a demo price feed.

`price_body()` is how every answer for an asset is serialized: once per price
change, never per request.
"""
from __future__ import annotations

import random
import time
from typing import Iterator, Optional, Union

import orjson

__all__ = ["ASSETS", "SNAPSHOT_DATE", "price_body", "random_walk", "snapshot_prices"]

#: The table key of the asset list (GET /v1/assets, a native hit); not an asset.
ASSET_LIST_KEY = "assets"
#: The table key of the batch query, GET /v1/prices?symbols=BTC,ETH (served natively).
BATCH_KEY = "prices"

ASSETS: tuple[str, ...] = tuple("""
BTC ETH USDT BNB SOL XRP USDC ADA DOGE TRX TON AVAX SHIB DOT LINK BCH NEAR MATIC LTC ICP
UNI DAI LEO ETC APT XLM OKB STX FIL CRO ATOM HBAR IMX ARB MNT VET INJ OP RENDER GRT
TAO MKR RUNE SUI THETA LDO FTM ALGO SEI FLOKI BSV TIA AAVE FLOW EGLD QNT BEAM AXS SAND XTZ
KCS GALA MANA CHZ NEO ORDI CFX EOS KAVA SNX WLD BTT IOTA XEC ROSE CAKE MINA BICO GNO FXS
AR PEPE DYDX XDC JASMY ZEC WOO CRV RPL OSMO COMP ONE ZIL ENJ LUNC CKB GMX HOT QTUM 1INCH
BAT IOTX ZRX CELO ENS SUSHI ANKR GLM YFI AUDIO RVN LRC MASK NANO OCEAN CFG BAND KSM JST RARI
ICX DASH SC ONT SKL STORJ UMA CVX API3 LSK FET BLUR PENDLE JUP PYTH STRK DYM WIF BONK MEME
ALT MANTA KAS APE CQT ONDO ENA ETHFI W ZRO
""".split())

assert len(ASSETS) == 150 and len(set(ASSETS)) == 150

# Where the simulator starts: approximate USD prices of the 150 assets around
# 2025-01-15, written from memory of public market data (not fetched), good to
# perhaps +-20 %; enough that a simulated BTC looks like BTC, never a quote.
# The list holds every asset the original design names per exchange (72);
# NANO LSK BICO RARI CFG CQT APE KAS ZRO and RENDER (RNDR's ticker since its
# 2023 migration) came in for RNDR AGIX (merged into FET) KLAY (now Kaia)
# WAVES SFP PORTAL PIXEL XAI AEVO TFUEL, with prices of the same kind.
SNAPSHOT_DATE = "2025-01-15"
_SNAPSHOT = """
BTC 97000 ETH 3300 USDT 1.0 BNB 700 SOL 190 XRP 2.5 USDC 1.0 ADA 0.95 DOGE 0.35 TRX 0.24
TON 5.2 AVAX 38 SHIB 0.000022 DOT 6.8 LINK 21 BCH 440 NEAR 5.1 MATIC 0.45 LTC 110 ICP 10
UNI 13 DAI 1.0 LEO 9.5 ETC 27 APT 9 XLM 0.42 OKB 48 STX 1.5 FIL 5 CRO 0.13 ATOM 6.5
HBAR 0.30 IMX 1.3 ARB 0.75 MNT 1.1 VET 0.045 INJ 22 OP 1.9 RENDER 7 GRT 0.2 TAO 450
MKR 1600 RUNE 2.5 SUI 4.5 THETA 2.0 LDO 1.8 FTM 0.7 ALGO 0.38 SEI 0.4 FLOKI 0.00015
BSV 55 TIA 4.5 AAVE 320 FLOW 0.75 EGLD 32 QNT 110 BEAM 0.02 AXS 6 SAND 0.55 XTZ 1.2
KCS 11 GALA 0.03 MANA 0.5 CHZ 0.09 NEO 13 ORDI 20 CFX 0.15 EOS 0.8 KAVA 0.45 SNX 2.2
WLD 2.0 BTT 0.0000009 IOTA 0.3 XEC 0.00004 ROSE 0.08 CAKE 2.4 MINA 0.5 BICO 0.25 GNO 300
FXS 2.8 AR 17 PEPE 0.000017 DYDX 1.4 XDC 0.09 JASMY 0.03 ZEC 55 WOO 0.2 CRV 0.9 RPL 10
OSMO 0.45 COMP 85 ONE 0.022 ZIL 0.02 ENJ 0.25 LUNC 0.0001 CKB 0.012 GMX 25 HOT 0.0025
QTUM 3.3 1INCH 0.42 BAT 0.23 IOTX 0.04 ZRX 0.45 CELO 0.7 ENS 35 SUSHI 1.3 ANKR 0.035
GLM 0.45 YFI 8000 AUDIO 0.15 RVN 0.02 LRC 0.2 MASK 2.7 NANO 1.1 OCEAN 0.6 CFG 0.45
BAND 1.2 KSM 30 JST 0.035 RARI 1.8 ICX 0.15 DASH 38 SC 0.005 ONT 0.22 SKL 0.05
STORJ 0.45 UMA 2.5 CVX 4 API3 1.4 LSK 0.95 FET 1.3 BLUR 0.25 PENDLE 5 JUP 0.85 PYTH 0.35
STRK 0.45 DYM 1.9 WIF 1.9 BONK 0.00003 MEME 0.01 ALT 0.12 MANTA 0.7 KAS 0.12 APE 1.2
CQT 0.008 ONDO 1.3 ENA 0.9 ETHFI 2.0 W 0.27 ZRO 5.2
"""


def snapshot_prices() -> dict[str, float]:
    """The shipped price snapshot (`SNAPSHOT_DATE`): asset -> approximate USD price."""
    words = _SNAPSHOT.split()
    return {asset: float(price) for asset, price in zip(words[::2], words[1::2])}


assert set(snapshot_prices()) == set(ASSETS)


def price_body(asset: str, price: Union[str, float], ts_ms: int, source: str = "sim",
               seq: int = 0, stale: bool = False, quote: str = "USD",
               age_s: Optional[float] = None) -> bytes:
    """The pre-serialized answer for one asset (about 110 bytes).

    A `str` price is written verbatim as a JSON number (the exchange's own
    digits: the caller checked it with `price_text`); a float is written as
    its shortest round-trip text.  ``age_s`` (seconds since the price was
    seen) is added to stale answers."""
    text = price if isinstance(price, str) else repr(float(f"{price:.6g}"))
    head = orjson.dumps({"asset": asset})[:-1]
    tail = {"ts": ts_ms, "source": source, "seq": seq, "quote": quote, "stale": stale}
    if age_s is not None:
        tail["age_s"] = round(age_s, 3)
    return b"%s,\"price\":%s,%s" % (head, text.encode(), orjson.dumps(tail)[1:])


def random_walk(seed: int = 1, volatility: float = 0.001) -> Iterator[dict[str, bytes]]:
    """Endless rounds of new prices for every asset, as {asset: body} dicts."""
    rng = random.Random(seed)
    prices = snapshot_prices()
    seq = 0
    while True:
        seq += 1
        now_ms = int(time.time() * 1000)
        for asset in ASSETS:
            prices[asset] *= 1.0 + rng.gauss(0.0, volatility)
        yield {a: price_body(a, p, now_ms, seq=seq) for a, p in prices.items()}
