"""What every command module shares: the exit statuses, the TLS client
flags, the store flags."""
from typing import Any

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: `beastnet load`: nothing at all came back from the target.
EXIT_UNREACHABLE = 3
#: `beastnet load --agents`: Redis unreachable, or too few agents free in time.
EXIT_NO_AGENTS = 4


def add_store_arguments(p: Any, tiers: str, redis_help: str) -> None:
    """--db, --config and --redis: where a command's stores are (the server's
    key store file, its config, a cluster's Redis), as `open_stores` takes them."""
    p.add_argument("--db", help="key store path (default: the config's keystore, "
                                "else beastnet-keys.db)")
    p.add_argument("--config", help=f"TOML config file of the server, for its keystore and "
                                    f"[{tiers}.NAME] (default: none)")
    p.add_argument("--redis", metavar="URL", help=redis_help)


def add_agents_arguments(p: Any, what: str) -> None:
    """--agents, --redis and --agents-wait: `what` runs on load agents
    (`beastnet agent`) instead of this process."""
    g = p.add_argument_group("load agents (many machines)")
    g.add_argument("--agents", type=int, metavar="N",
                   help=f"run {what} on N `beastnet agent` processes: the load split over "
                        "them, their results merged (default: this process)")
    g.add_argument("--redis", metavar="URL",
                   help="the Redis or Valkey the agents registered at (default: none)")
    g.add_argument("--agents-wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for N free agents (default: %(default)g)")


def open_agents(args: Any) -> Any:
    """The `agents.Coordinator` of --agents N --redis URL, its agents
    claimed, or None without --agents.  `LoadConfigError` when only one of
    the two is given; `AgentsError` (exit 4) as `Coordinator.open` raises it."""
    from beastnet.errors import LoadConfigError
    if (args.agents is None) != (args.redis is None):
        raise LoadConfigError("--agents N and --redis URL go together")
    if args.agents is None:
        return None
    from beastnet.loadgen.agents import Coordinator
    coordinator = Coordinator(args.redis, args.agents, wait_s=args.agents_wait)
    coordinator.open()
    return coordinator


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


def finish_load_report(command: str, args: Any, full: dict, text: str, body: dict) -> int:
    """Write the outputs a load command's flags ask for (--json, --hdr,
    --html), then its exit status: 2 when a file cannot be written, 3 when
    nothing came back, else 1 on a failing verdict and 0 otherwise."""
    import sys
    from beastnet.loadgen import outputs
    try:
        outputs.write_outputs(full, text, json_path=args.json,
                              hdr_path=getattr(args, "hdr", None),
                              html_path=getattr(args, "html", None))
    except OSError as exc:
        print(f"beastnet {command}: cannot write {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    if body.get("unreachable"):
        return EXIT_UNREACHABLE
    return EXIT_FAIL if body["verdict"] == "fail" else EXIT_PASS
