"""The ``memable`` logger, made on first use (``logging`` loads only when memable logs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    import logging

__all__ = ["INFO", "logger"]

INFO: Final = 20  # logging.INFO, without importing logging


@final
class _Logger:
    """Stands for ``logging.getLogger("memable")``; every attribute is the real logger's."""

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger: logging.Logger | None = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger("memable")
        return getattr(self._logger, name)


logger: Final[logging.Logger] = _Logger()  # type: ignore[assignment]
