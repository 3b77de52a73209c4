"""Memory: a server holding 10,000 keys of 120-byte bodies stays under 50 MB RSS.

Measured in a fresh subprocess (this process carries pytest and hypothesis),
after the server has answered traffic for every key, with the default
configuration (one socket per CPU, 32 MiB socket buffers -- kernel memory, not
RSS) and with a miss handler (the uvloop control plane running)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

LIMIT_BYTES = 50 * 1024 * 1024

SCRIPT = textwrap.dedent("""
    import json, socket, sys
    from beastnet import ResponseTable, UDPServer

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024      # kB -> bytes
        raise SystemExit(f"no {field}")

    rss_before = status("VmRSS")
    keys = [f"sym:{i:05d}" for i in range(10_000)]
    table = ResponseTable(capacity=len(keys))
    table.update({k: (k.encode() + b"|" + b"x" * 120)[:120] for k in keys})
    assert len(table) == 10_000 and all(len(table[k]) == 120 for k in keys[:10])
    handler = (lambda req: None) if sys.argv[1] == "handler" else None
    with UDPServer(table, handler=handler) as srv:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(2)
        c.connect(srv.address)
        for i, k in enumerate(keys):
            c.send(k.encode())
            if i % 32 == 31 or i == len(keys) - 1:
                for _ in range(i % 32 + 1):
                    assert len(c.recv(200)) == 120
        c.send(b"absent")
        assert c.recv(200).startswith(b'{"error"')
        rss = status("VmRSS")
        hwm = status("VmHWM")
        stats = srv.stats()
        c.close()
    print(json.dumps({"rss": rss, "hwm": hwm, "rss_before": rss_before,
                      "hits": stats["totals"]["hits"], "sockets": stats["sockets"],
                      "table": table.memory_stats()}))
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["native", "handler"])
def test_server_with_10k_keys_under_50mb(mode):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["hits"] == 10_000
    assert r["table"]["keys"] == 10_000 and r["table"]["retired_objects"] == 0
    # the table itself: per entry the 120-byte body, its content type, the
    # pre-built HTTP head (~90 bytes, so HTTP hits format nothing) and a header,
    # which since permessage-deflate also holds the compressed frame's head,
    # length and pointer (~24 bytes, there whether or not the body is deflated)
    assert r["table"]["entry_bytes"] < 10_000 * 330
    assert r["rss"] < LIMIT_BYTES, f"VmRSS {r['rss'] / 2**20:.1f} MiB"
    assert r["hwm"] < LIMIT_BYTES, f"VmHWM {r['hwm'] / 2**20:.1f} MiB"
    print(f"{mode}: VmRSS {r['rss'] / 2**20:.1f} MiB, peak {r['hwm'] / 2**20:.1f} MiB "
          f"(interpreter alone {r['rss_before'] / 2**20:.1f} MiB), table {r['table']}")
