"""Lifecycle log records of instances and steps, on ``logging.getLogger("memable")``.

Every record carries ``instance_id``, ``workflow`` and ``step`` (``None`` where none) in
its ``extra`` fields, for structured handlers. Nothing is formatted or allocated when the
level is off: each call checks :meth:`logging.Logger.isEnabledFor` first.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["DEBUG", "ERROR", "INFO", "WARNING", "event", "logger"]

logger: Final = logging.getLogger("memable")

DEBUG: Final = logging.DEBUG
INFO: Final = logging.INFO
WARNING: Final = logging.WARNING
ERROR: Final = logging.ERROR


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
