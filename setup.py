"""Builds the two extensions, `beastnet._core` (the engine) and
`beastnet.loadgen._native` (the load generator, which shares no C code with
the engine); all metadata lives in pyproject.toml.

Both link the system's OpenSSL (libssl, libcrypto), found with pkg-config:
the engine terminates TLS in its HTTP/WebSocket workers and the load generator
speaks https:// and wss://.  On Debian/Ubuntu: apt-get install libssl-dev pkg-config.

Environment switches:
  BEASTNET_DEBUG=1     -O0 -g, BEASTNET_DEBUG macro set, Cython bounds checks kept
  BEASTNET_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (needs LD_PRELOAD of libasan)
  BEASTNET_ANNOTATE=1  write the cython -a HTML pages next to the sources
"""
import os
import shutil
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("BEASTNET_DEBUG") == "1"
sanitize = os.environ.get("BEASTNET_SANITIZE") == "1"
annotate = os.environ.get("BEASTNET_ANNOTATE") == "1"



def openssl_flags() -> tuple[list[str], list[str], list[str]]:
    """(include dirs, library dirs, libraries) of the system's OpenSSL >= 1.1.1.

    pkg-config is asked first; without it, a compiler's default search path
    that holds openssl/ssl.h is accepted.  Anything else stops the build with
    one line saying what to install, not a compiler error three screens down.
    """
    hint = ("beastnet needs OpenSSL >= 1.1.1 and its headers to build: "
            "apt-get install libssl-dev pkg-config (Debian/Ubuntu), "
            "dnf install openssl-devel pkgconf (Fedora/RHEL), "
            "or set PKG_CONFIG_PATH to the directory holding openssl.pc")
    if shutil.which("pkg-config"):
        probe = subprocess.run(["pkg-config", "--atleast-version=1.1.1", "openssl"],
                               capture_output=True)
        if probe.returncode == 0:
            def ask(flag: str) -> list[str]:
                out = subprocess.run(["pkg-config", flag, "openssl"], check=True,
                                     capture_output=True, text=True).stdout.split()
                return [w[2:] for w in out]
            return ask("--cflags-only-I"), ask("--libs-only-L"), ask("--libs-only-l")
    for root in ("/usr/include", "/usr/local/include"):
        if os.path.exists(os.path.join(root, "openssl", "ssl.h")):
            return [], [], ["ssl", "crypto"]
    sys.exit(hint)


def liburing_flags() -> tuple[list[str], list[str], list[str], bool]:
    """(include dirs, library dirs, libraries, found) of the system's liburing.

    Optional: without it the engine builds all the same and the HTTP
    engine's io_uring backend reports "built without liburing".  On
    Debian/Ubuntu: apt-get install liburing-dev.
    """
    if shutil.which("pkg-config") is None:
        return [], [], [], False
    if subprocess.run(["pkg-config", "--exists", "liburing"], capture_output=True).returncode:
        return [], [], [], False

    def ask(flag: str) -> list[str]:
        out = subprocess.run(["pkg-config", flag, "liburing"], check=True,
                             capture_output=True, text=True).stdout.split()
        return [w[2:] for w in out]
    return ask("--cflags-only-I"), ask("--libs-only-L"), ask("--libs-only-l"), True


ssl_include, ssl_libdirs, ssl_libs = openssl_flags()
uring_include, uring_libdirs, uring_libs, uring_found = liburing_flags()

cflags = ["-Wall", "-Wno-unused-function", "-Wsign-compare", "-pthread"]
ldflags = ["-pthread"]
macros = [("BEASTNET_DEBUG", "1" if debug else "0")]
core_macros = [*macros, ("BEASTNET_HAVE_LIBURING", "1" if uring_found else "0")]
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
    include_dirs=["src/beastnet/includes", *ssl_include, *uring_include],
    library_dirs=[*ssl_libdirs, *uring_libdirs],
    # zlib: permessage-deflate on the WebSocket feed; liburing: the HTTP io_uring backend
    libraries=[*ssl_libs, "z", *uring_libs],
    define_macros=core_macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)
loadgen = Extension(
    "beastnet.loadgen._native",
    sources=["src/beastnet/loadgen/_native.pyx"],
    include_dirs=["src/beastnet/includes", "src/beastnet/loadgen", *ssl_include],
    library_dirs=ssl_libdirs,
    libraries=[*ssl_libs, "z"],         # zlib: permessage-deflate in the WebSocket client
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
