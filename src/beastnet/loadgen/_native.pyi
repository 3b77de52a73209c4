"""Type stubs for the load generator's native module (_native.pyx).

Driven by beastnet.loadgen's udp, http and ws modules; not meant for direct use.
"""
from typing import Any, Optional

PLATFORM_LINUX: bool
DEBUG_BUILD: bool

_Alias = Optional[tuple[list[int], list[int]]]
_Snapshot = tuple[bytes, int, int, int, int]

def hist_bucket_bounds() -> tuple[list[int], list[int]]: ...
def hist_index_of(value_ns: int) -> int: ...

class TLSClientContext:
    resume: bool
    def __init__(self, host: str, *, cafile: Optional[str] = None, insecure: bool = False,
                 resume: bool = False, alpn: bool = True,
                 server_name: Optional[str] = None) -> None: ...

def tls_failure_text(kind: int, verify_result: int, error: int) -> str: ...

class LoadRun:
    def start(self) -> None: ...
    def stop(self, abort: bool = False) -> None: ...
    def finished(self) -> bool: ...
    def join(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def histogram(self, which: int = 0) -> _Snapshot: ...
    def thread_info(self) -> list[dict[str, Any]]: ...

class UDPLoadRun(LoadRun):
    def __init__(self, fd_groups: list[list[int]], payloads: list[bytes], alias: _Alias = None,
                 *, mode: int = 0, window: int = 32, batch: int = 32,
                 slots_per_socket: int = 64, interval_ns: float = 0.0,
                 timeout_ns: int = 200000000, warmup_ns: int = 0, duration_ns: int = 1,
                 quotas: Optional[list[int]] = None, cpus: Optional[list[int]] = None,
                 seed: int = ..., gso_tag_digits: Optional[list[int]] = None) -> None: ...

class HTTPLoadRun(LoadRun):
    def __init__(self, sockaddr: bytes, family: int, conn_counts: list[int],
                 requests: list[bytes], close_requests: list[bytes], alias: _Alias = None,
                 *, mode: int = 0, pipeline: int = 1, per_conn: int = 0,
                 interval_ns: float = 0.0, timeout_ns: int = 200000000,
                 connect_timeout_ns: int = 1000000000, warmup_ns: int = 0,
                 duration_ns: int = 1, quotas: Optional[list[int]] = None,
                 cpus: Optional[list[int]] = None, seed: int = ...,
                 tls: Optional[TLSClientContext] = None) -> None: ...
    def status_codes(self) -> dict[int, int]: ...

class WSLoadRun(LoadRun):
    def __init__(self, sockaddr: bytes, family: int, conn_counts: list[int], upgrade: bytes,
                 accept: bytes, subscribes: list[bytes], conn_subs: list[list[int]], *,
                 ts_key: bytes = b"", ts_unit_ns: int = 1, seq_key: bytes = b"",
                 connect_timeout_ns: int = 1000000000, backoff_base_ns: int = 100000000,
                 backoff_cap_ns: int = 10000000000, ping_interval_ns: int = 0,
                 pong_timeout_ns: int = 5000000000, max_pending: int = 256,
                 read_buffer: int = 65536, warmup_ns: int = 0, duration_ns: int = 1,
                 cpus: Optional[list[int]] = None, seed: int = ...,
                 tls: Optional[TLSClientContext] = None,
                 probes: Optional[list[bytes]] = None, matches: Optional[list[bytes]] = None,
                 refusal: bytes = b"", probe_timeout_ns: int = 1000000000,
                 deflate: bool = False, ts_path: Optional[list[Any]] = None,
                 seq_path: Optional[list[Any]] = None) -> None: ...
    def longest_stalls_ns(self) -> list[int]: ...
