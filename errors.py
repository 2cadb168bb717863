"""Errors whose message is written for the person using the app.

The UI and the API show `str(error)` of a `UserFacingError` as it is, so each message says what is
wrong and what to do instead. Anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

Entry = TypeVar("Entry")


class UserFacingError(Exception):
    """An error the person can act on; its message is shown verbatim in the UI and the API."""


class InvalidRequestError(UserFacingError):
    """A parameter or input is out of range, of the wrong type or unknown."""


class InvalidImageError(InvalidRequestError):
    """An uploaded image cannot be read or is too large."""


class ImageTooLargeError(InvalidImageError):
    """An uploaded image is over the byte or pixel limit."""


class ModelUnavailableError(UserFacingError):
    """A model is neither in MODELS_DIR nor in the local cache, and the Hub cannot be reached."""


class GpuOutOfMemoryError(UserFacingError):
    """The request did not fit in GPU memory; memory was freed and a smaller one will work."""


def look_up(registry: Mapping[str, Entry], name: Any, what: str) -> Entry:
    """`registry[name]`, or an InvalidRequestError naming `what` and listing the choices.

    `name` comes from a person or the API, so it may be anything: an unknown name, a number, an
    unhashable value (a list sent as JSON) all get the same message.
    """
    try:
        return registry[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value sent to the API
        raise InvalidRequestError(
            f"Unknown {what} {name!r}; choose one of: {', '.join(registry)}."
        ) from None
