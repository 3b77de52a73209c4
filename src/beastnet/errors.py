"""Exceptions raised by beastnet.  All derive from `BeastnetError`."""


class BeastnetError(Exception):
    """Base class of every beastnet error."""


class InvalidKeyError(BeastnetError, ValueError):
    """A key is empty, longer than 64 bytes, or has a byte outside [A-Za-z0-9._:/-]."""


class TableFullError(BeastnetError, OverflowError):
    """A write would add a key past the table's `max_keys`; nothing was published."""


class ServerError(BeastnetError, RuntimeError):
    """A server could not start, or a native thread reported a fatal error."""


class LoadConfigError(BeastnetError, ValueError):
    """A load-generator setting is out of range (zero duration, no keys, ...)."""


class LoadError(BeastnetError, RuntimeError):
    """A load run could not start (file-descriptor limit, unresolvable host)
    or a generator thread stopped on a fatal error."""


class LoadTLSError(LoadError):
    """No TLS connection to the target succeeded: its certificate did not
    verify, it does not speak TLS, or every handshake failed.  The CLI
    treats the target as unreachable (exit status 3)."""


class AgentsError(LoadError):
    """Load agents could not be used: Redis unreachable, too few agents
    registered in time, or an agent that did not answer."""


class TLSConfigError(BeastnetError, ValueError):
    """A TLS certificate or key could not be loaded (missing, unreadable, not
    PEM, not matching), or a `TLSConfig` setting is out of range."""


class ClusterError(BeastnetError, RuntimeError):
    """Redis could not be used as asked (a bad URL, the client not installed)."""
