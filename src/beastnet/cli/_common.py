"""What every command module shares: the exit statuses, the TLS client flags."""
from typing import Any

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: `beastnet load`: nothing at all came back from the target.
EXIT_UNREACHABLE = 3


def add_tls_arguments(p: Any) -> None:
    """--cacert, --insecure and --tls-resume: https:// and wss:// alike."""
    g = p.add_argument_group("TLS (https://, wss://)")
    g.add_argument("--cacert", metavar="FILE",
                   help="verify the server's certificate against this PEM CA file "
                        "(default: the system's trust store)")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify the server's certificate (default: verify)")
    g.add_argument("--tls-resume", action="store_true",
                   help="resume the last TLS session on each new connection "
                        "(default: a full handshake every time)")
