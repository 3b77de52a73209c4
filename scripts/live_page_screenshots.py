"""Retake docs/img/live-page.png (the live page streaming, dev profile) and
docs/img/live-page-no-key.png (keys enforced, before a key is entered) with
headless Chromium, as the tests drive it.  From the repository's root:

    python scripts/live_page_screenshots.py
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests")
from browser import Browser                  # noqa: E402  (tests/ on the path first)
from test_serve import Serve, add_key        # noqa: E402

out = Path("docs/img")
tmp = Path(tempfile.mkdtemp(prefix="beastnet-shots-"))


def shoot(server, name, ready, then=None):
    with Browser() as b:
        b.call("Emulation.setDeviceMetricsOverride", width=1280, height=720, deviceScaleFactor=1,
               mobile=False)
        b.open(f"http://127.0.0.1:{server.http_port}/")
        b.wait_for(ready)
        if then:
            then(b)
        b.screenshot(str(out / name))
        assert b.errors == [], b.errors


s = Serve(tmp, "--no-keys")
try:
    shoot(s, "live-page.png", "parseInt(document.getElementById('updates').textContent) > 1500",
          lambda b: b.wait_for("document.getElementById('sources').textContent.includes('sim-a')"))
finally:
    s.terminate()
db = tmp / "keys.db"
add_key(db, "partner", "partner-key-00001")
s = Serve(tmp, "--keystore", str(db))
try:
    shoot(s, "live-page-no-key.png", "!document.getElementById('problem').hidden")
finally:
    s.terminate()
