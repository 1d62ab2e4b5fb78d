"""Debug records for ``--verbose``, without importing logging.

Only a program that imported logging (``--verbose`` does, so do tests and
embedding applications) can have asked for DEBUG records, so a command that
did not spends no start-up time importing it.
"""

from __future__ import annotations

import sys


def debug(logger: str, message: str, *args: object, exc_info: bool = False) -> None:
    """Log ``message % args`` at DEBUG on ``logger``, if logging is in use."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(logger).debug(message, *args, exc_info=exc_info)
