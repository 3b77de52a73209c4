"""Which exchanges quote which asset: the default map of the 150 assets.

The first exchange of an asset's list is its primary, the others its
fallbacks in order.  The 72 assets the original design gave each exchange
(twelve per exchange, all among the 150) keep that exchange as primary; the
secondaries and the other 78 assets follow where each asset is
listed with a USD or USDT quote (as best known when written: `beastnet feeds
check` tells which symbols an exchange really has).  A config file replaces
entries with `[feeds.assets] BTC = ["kraken", "coinbase"]`.
"""
from __future__ import annotations

__all__ = ["DEFAULT_ROUTES"]

_TABLE = """
BTC coinbase kraken | ETH coinbase kraken | SOL coinbase kraken | DOGE coinbase kraken
XRP coinbase kraken | LINK coinbase kraken | DOT coinbase kraken | LTC coinbase kraken
AVAX coinbase kraken | UNI coinbase kraken | PEPE coinbase kraken | XLM coinbase kraken
AAVE gemini coinbase | ADA gemini coinbase | MATIC gemini coinbase | ATOM gemini coinbase
NEAR gemini coinbase | ARB gemini coinbase | MKR gemini coinbase | CRV gemini coinbase
GRT gemini coinbase | FIL gemini coinbase | SHIB gemini coinbase | BAT gemini coinbase
NANO kraken gateio | SC kraken okx | LSK kraken gateio | KAVA kraken okx
BICO kraken coinbase | RARI kraken coinbase | OCEAN kraken okx | CFG kraken gateio
CQT kraken gateio | ALGO kraken coinbase | FET kraken coinbase | FLOW kraken coinbase
BNB gateio okx | TRX gateio okx | APT gateio okx | SEI gateio okx | INJ gateio okx
OP gateio okx | SUI gateio okx | VET gateio okx | HBAR gateio okx | SAND gateio okx
MANA gateio okx | FTM gateio okx
TON cryptocom okx | WLD cryptocom okx | APE cryptocom coinbase | BLUR cryptocom okx
IMX cryptocom coinbase | ENS cryptocom coinbase | LDO cryptocom kraken | SNX cryptocom kraken
COMP cryptocom kraken | 1INCH cryptocom kraken | SUSHI cryptocom kraken
GALA cryptocom okx
KAS okx gateio | TIA okx gateio | JUP okx gateio | STRK okx gateio | PYTH okx gateio
W okx gateio | ZRO okx gateio | PENDLE okx gateio | ONDO okx gateio | RENDER okx coinbase
WIF okx gateio | FLOKI okx gateio
USDT coinbase kraken | USDC kraken | BCH coinbase kraken | ICP coinbase okx
DAI kraken coinbase | LEO okx gateio | ETC coinbase kraken | OKB okx | STX coinbase okx
CRO cryptocom coinbase | MNT okx gateio | TAO gateio kraken | RUNE kraken gateio
THETA gateio okx | BSV gateio okx | EGLD kraken okx | QNT coinbase kraken | BEAM gateio okx
AXS coinbase kraken | XTZ coinbase kraken | KCS gateio | CHZ coinbase okx | NEO okx gateio
ORDI okx gateio | CFX okx gateio | EOS kraken okx | BTT gateio okx | IOTA okx gateio
XEC gateio okx | ROSE coinbase gateio | CAKE gateio okx | MINA kraken okx
GNO kraken coinbase | FXS coinbase kraken | AR kraken okx | DYDX kraken okx
XDC gateio cryptocom | JASMY coinbase gateio | ZEC coinbase kraken | WOO okx gateio
RPL coinbase kraken | OSMO coinbase kraken | ONE okx gateio | ZIL okx cryptocom
ENJ coinbase kraken | LUNC okx gateio | CKB okx gateio | GMX kraken okx | HOT gateio
QTUM kraken okx | IOTX coinbase okx | ZRX coinbase kraken | CELO coinbase okx
ANKR coinbase kraken | GLM coinbase okx | YFI coinbase kraken | AUDIO coinbase kraken
RVN okx gateio | LRC coinbase kraken | MASK coinbase okx
BAND coinbase kraken | KSM kraken okx | JST okx gateio | ICX kraken okx
DASH kraken okx | ONT okx gateio | SKL coinbase okx | STORJ coinbase kraken
UMA coinbase kraken | CVX kraken okx | API3 coinbase kraken
DYM okx gateio | BONK coinbase kraken | MEME okx gateio | ALT gateio okx | MANTA okx gateio
ENA kraken okx | ETHFI okx gateio
"""

DEFAULT_ROUTES: dict[str, list[str]] = {
    words[0]: words[1:]
    for words in (entry.split() for line in _TABLE.strip().splitlines()
                  for entry in line.split("|"))
}
