"""Builds the two extensions, `beastnet._core` (the engine) and
`beastnet.loadgen._native` (the load generator, which shares no C code with
the engine); all metadata lives in pyproject.toml.

Environment switches:
  BEASTNET_DEBUG=1     -O0 -g, BEASTNET_DEBUG macro set, Cython bounds checks kept
  BEASTNET_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (needs LD_PRELOAD of libasan)
  BEASTNET_ANNOTATE=1  write the cython -a HTML pages next to the sources
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("BEASTNET_DEBUG") == "1"
sanitize = os.environ.get("BEASTNET_SANITIZE") == "1"
annotate = os.environ.get("BEASTNET_ANNOTATE") == "1"

cflags = ["-Wall", "-Wno-unused-function", "-Wsign-compare", "-pthread"]
ldflags = ["-pthread"]
macros = [("BEASTNET_DEBUG", "1" if debug else "0")]
if debug:
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O3"]
if sanitize:
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cflags += flags + ["-g"]
    ldflags += flags

core = Extension(
    "beastnet._core",
    sources=["src/beastnet/_core.pyx"],
    include_dirs=["src/beastnet/includes"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)
loadgen = Extension(
    "beastnet.loadgen._native",
    sources=["src/beastnet/loadgen/_native.pyx"],
    include_dirs=["src/beastnet/includes", "src/beastnet/loadgen"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(
    ext_modules=cythonize(
        [core, loadgen],
        annotate=annotate,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "boundscheck": debug,
            "wraparound": debug,
            "cdivision": True,
        },
    ),
)
