"""Lifecycle log records of instances and steps, on ``logging.getLogger("memable")``.

Every record carries ``instance_id``, ``workflow`` and ``step`` (``None`` where none) in
its ``extra`` fields, for structured handlers. Nothing is formatted or allocated when the
level is off: each call checks :meth:`logging.Logger.isEnabledFor` first.

The logger is made on first use, so ``import memable`` does not load :mod:`logging`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    import logging

__all__ = ["DEBUG", "ERROR", "INFO", "WARNING", "event", "logger"]

# logging's levels, without importing logging
DEBUG: Final = 10
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40


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


def event(
    level: int,
    message: str,
    *args: object,
    instance_id: str,
    workflow: str,
    step: str | None = None,
    exc_info: BaseException | None = None,
) -> None:
    """Log *message* % *args* at *level* with the instance's fields, if enabled."""
    if logger.isEnabledFor(level):
        logger.log(
            level,
            message,
            *args,
            exc_info=exc_info,
            extra={"instance_id": instance_id, "workflow": workflow, "step": step},
        )
