"""`StartStop`: the context manager of a part run by start() and stop()."""
from __future__ import annotations

from typing import Any, TypeVar

_P = TypeVar("_P", bound="StartStop")


class StartStop:
    """A part started by ``start()`` (which returns it) and stopped by
    ``stop()``; ``with part:`` starts it and stops it on the way out, an
    exception included.  Subclasses implement the two methods."""

    def start(self: _P) -> _P:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
