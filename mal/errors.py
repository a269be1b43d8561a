"""The one error type for problems with the user's input or settings.

The CLI prints a :class:`MalError`'s message on one line and exits with code 2; anything else is a bug and
keeps its traceback. Every specific error (a bad COCO file, an unreadable image, wrong weights, ...)
subclasses it. It is a ValueError, so ``except ValueError`` in user code keeps working.
"""
from __future__ import annotations


class MalError(ValueError):
    """Bad input or settings; the message names the file, annotation or option at fault."""
