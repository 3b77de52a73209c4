"""Latency histograms of the load generator, merged into NumPy.

The native threads record into a log-linear histogram (see `_hist.pxi`):
exact below 256 ns, then 128 equal buckets per power of two, so any value
from 1 µs to 60 s is reported within 0.4 % (bucket midpoint; the bucket is at
most 0.78 % wide).  This module turns the merged bucket counts into
percentiles.
"""
from __future__ import annotations

import base64
import math
import os
import struct
import zlib
from typing import Any, Optional

# NumPy's OpenBLAS starts a thread per CPU whose idle spinning shows in the
# generator's own CPU figures; the histograms need no BLAS.  Unless the user
# chose otherwise, one thread (none extra).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the line above)

from beastnet.loadgen import _native

__all__ = ["HDR_HIGHEST_NS", "HDR_SIGNIFICANT_DIGITS", "Histogram", "STANDARD_PERCENTILES"]

_lower, _upper = _native.hist_bucket_bounds()
BUCKET_LOWER_NS = np.asarray(_lower, dtype=np.float64)
BUCKET_UPPER_NS = np.asarray(_upper, dtype=np.float64)
# What a bucket reports: its exact value in the linear range, else its midpoint.
BUCKET_VALUE_NS = np.where(BUCKET_UPPER_NS - BUCKET_LOWER_NS <= 1, BUCKET_LOWER_NS,
                           (BUCKET_LOWER_NS + BUCKET_UPPER_NS) / 2.0)
NBUCKETS = len(_lower)
del _lower, _upper

# HdrHistogram's standard encoding (V2, as its Java, C and Python versions
# write it): a big-endian header, the counts as ZigZag LEB128 varints with a
# run of zeros written as one negative count, zlib, then base64.  Our buckets
# are laid out exactly as an HdrHistogram with lowest value 1 and 2
# significant digits (256 exact values, then 128 buckets per power of two),
# so bucket i *is* HdrHistogram's counts index i and no count moves.
HDR_SIGNIFICANT_DIGITS = 2
HDR_HIGHEST_NS = (1 << 38) - 1          # our top bucket holds everything above
_HDR_ENCODING_COOKIE = 0x1C849303 | 0x10
_HDR_COMPRESSION_COOKIE = 0x1C849304 | 0x10


def _zigzag_leb128(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        z = (v << 1) ^ (v >> 63)            # ZigZag: small negatives stay short
        z &= 0xFFFFFFFFFFFFFFFF
        while True:
            byte = z & 0x7F
            z >>= 7
            if z:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


def _zigzag_leb128_decode(payload: bytes) -> list[int]:
    """The signed words of `_zigzag_leb128`; `ValueError` on a truncated one."""
    words: list[int] = []
    value = shift = 0
    for byte in payload:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("HdrHistogram payload: varint longer than 64 bits")
            continue
        words.append((value >> 1) ^ -(value & 1))
        value = shift = 0
    if shift:
        raise ValueError("HdrHistogram payload: truncated varint")
    return words


#: The percentiles every report shows, with their report names.
STANDARD_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
                        ("p99.9", 99.9), ("p99.99", 99.99))


class Histogram:
    """Bucket counts (NumPy uint64) plus the exact count, sum, min and max."""

    __slots__ = ("counts", "total", "sum_ns", "min_ns", "max_ns", "_cum")

    def __init__(self, counts: Optional[np.ndarray] = None, total: Optional[int] = None,
                 sum_ns: int = 0, min_ns: int = 0, max_ns: int = 0) -> None:
        self.counts = (np.zeros(NBUCKETS, dtype=np.uint64) if counts is None
                       else np.asarray(counts, dtype=np.uint64))
        self.total = int(self.counts.sum()) if total is None else int(total)
        self.sum_ns = int(sum_ns)
        self.min_ns = int(min_ns)
        self.max_ns = int(max_ns)
        self._cum: Optional[np.ndarray] = None

    @classmethod
    def from_native(cls, snapshot: tuple) -> "Histogram":
        """From `LoadRun.histogram()`: (bytes of counts, total, sum, min, max)."""
        raw, total, sum_ns, min_ns, max_ns = snapshot
        return cls(np.frombuffer(raw, dtype=np.uint64).copy(), total, sum_ns, min_ns, max_ns)

    def __sub__(self, older: "Histogram") -> "Histogram":
        """The values recorded between two snapshots of one histogram (min and
        max unknown: percentiles then come from buckets alone)."""
        # The total comes from the counts: the threads keep recording while
        # a snapshot is read, so a separately read total can run ahead of
        # the counts, and a rank past the last count would land in the top
        # bucket (a phantom 275 s maximum).
        return Histogram(self.counts - older.counts, None, self.sum_ns - older.sum_ns)

    def merge(self, other: "Histogram") -> "Histogram":
        """A new histogram holding both, exactly: the counts add bucket by
        bucket (runs of one generator, or load agents on several machines).
        The threads of one run are merged natively (`LoadRun.histogram`);
        this is the one merge of `Histogram` objects."""
        mins = [h.min_ns for h in (self, other) if h.total]
        return Histogram(self.counts + other.counts, self.total + other.total,
                         self.sum_ns + other.sum_ns, min(mins) if mins else 0,
                         max(self.max_ns, other.max_ns))

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.total if self.total else math.nan

    def percentile(self, q: float) -> float:
        """The q-th percentile in ns (NaN when empty); q = 100 is the exact max."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {q}")
        if self.total <= 0:
            return math.nan
        if q >= 100.0 and self.max_ns:
            return float(self.max_ns)
        if self._cum is None:
            self._cum = np.cumsum(self.counts, dtype=np.uint64)
        rank = max(1, math.ceil(q / 100.0 * self.total))
        index = int(np.searchsorted(self._cum, rank))
        value = float(BUCKET_VALUE_NS[min(index, NBUCKETS - 1)])
        if self.max_ns:                 # exact extremes known: stay within them
            value = min(max(value, float(self.min_ns)), float(self.max_ns))
        return value

    def summary(self) -> dict[str, float]:
        """p50 .. p99.99 and max in ns."""
        out = {name: self.percentile(q) for name, q in STANDARD_PERCENTILES}
        out["max"] = float(self.max_ns) if self.total else math.nan
        return out

    def to_hdr(self) -> str:
        """The histogram in HdrHistogram's standard compressed encoding
        (base64 text, as `HistogramLogWriter` writes it): values in ns,
        readable by any HdrHistogram library, mergeable with its tools."""
        nz = np.nonzero(self.counts)[0]
        words: list[int] = []
        if len(nz):
            zeros = 0
            for count in self.counts[:int(nz[-1]) + 1].tolist():
                if count == 0:
                    zeros += 1
                    continue
                if zeros:
                    words.append(-zeros)
                    zeros = 0
                words.append(int(count))
        payload = _zigzag_leb128(words)
        # cookie, payload length, normalizing index offset, significant
        # digits, lowest and highest trackable value, integer-to-double ratio.
        header = struct.pack(">iiiiqqd", _HDR_ENCODING_COOKIE, len(payload), 0,
                             HDR_SIGNIFICANT_DIGITS, 1, HDR_HIGHEST_NS, 1.0)
        compressed = zlib.compress(header + payload)
        return base64.b64encode(struct.pack(">ii", _HDR_COMPRESSION_COOKIE, len(compressed))
                                + compressed).decode("ascii")

    @classmethod
    def from_hdr(cls, text: str, sum_ns: int = 0, min_ns: int = 0,
                 max_ns: int = 0) -> "Histogram":
        """The histogram `to_hdr` encoded (load agents ship their histograms
        so); the encoding holds only the counts, so the exact sum, min and
        max travel beside it.  `ValueError` naming what is wrong when `text`
        is not an encoding of this layout."""
        try:
            raw = base64.b64decode(text, validate=True)
            cookie, length = struct.unpack_from(">ii", raw)
            if cookie != _HDR_COMPRESSION_COOKIE or length != len(raw) - 8:
                raise ValueError("not a compressed HdrHistogram")
            inner = zlib.decompress(raw[8:])
            cookie, length, offset, digits, lowest, highest, _ = struct.unpack_from(
                ">iiiiqqd", inner)
        except (ValueError, struct.error, zlib.error) as exc:
            raise ValueError(f"HdrHistogram encoding: {exc}") from None
        if (cookie != _HDR_ENCODING_COOKIE or offset != 0 or digits != HDR_SIGNIFICANT_DIGITS
                or lowest != 1 or length != len(inner) - 40):
            raise ValueError("HdrHistogram encoding: not beastnet's layout (lowest 1, "
                             f"{HDR_SIGNIFICANT_DIGITS} significant digits)")
        counts = np.zeros(NBUCKETS, dtype=np.uint64)
        index = 0
        for word in _zigzag_leb128_decode(inner[40:]):
            if word < 0:
                index -= word               # a run of empty buckets
                continue
            if index >= NBUCKETS:
                raise ValueError(f"HdrHistogram encoding: bucket {index} past the "
                                 f"{NBUCKETS} of this layout")
            counts[index] = word
            index += 1
        return cls(counts, None, sum_ns, min_ns, max_ns)

    def to_dict(self) -> dict[str, Any]:
        """Sparse form for the JSON report: the non-empty buckets only."""
        nz = np.nonzero(self.counts)[0]
        return {
            "total": self.total,
            "min_ns": self.min_ns if self.total else None,
            "max_ns": self.max_ns if self.total else None,
            "mean_ns": None if not self.total else self.mean_ns,
            "bucket_lower_ns": BUCKET_LOWER_NS[nz].astype(np.int64).tolist(),
            "bucket_upper_ns": BUCKET_UPPER_NS[nz].astype(np.int64).tolist(),
            "counts": self.counts[nz].astype(np.int64).tolist(),
            "hdr": self.to_hdr(),
        }
