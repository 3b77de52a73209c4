"""WebSocket load: clients that subscribe and read what a server pushes.

`config` (`WSLoadConfig`, light: no native code), `run` (`run_ws_load`, the
native loop), `verdict` (one judgement of a run, shared by `load ws://`,
density tiers and stress levels), and the tests built on runs: `density`
(symbols per connection), `stress` (the connection ladder), `knee` (the
broadcast knee), with `htmlpage` drawing their reports.
"""
