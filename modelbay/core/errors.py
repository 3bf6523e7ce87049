"""The core's error tree. Dialects turn these into their own status codes and bodies."""

from __future__ import annotations

from collections.abc import Mapping
from string import Template


class ModelbayError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class NotFound(ModelbayError):
    """Raised when a named thing does not exist (or is not visible to the caller)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind.capitalize()} '{name}' was not found")
        self.kind = kind
        self.name = name


class InvalidInput(ModelbayError):
    """Raised when the caller's input is malformed or breaks a rule; nothing was changed.

    `field` is the input at fault, in the core's own words (`max_retries`, `stop_at`). A message
    given with a field writes each input it names as `$name`, so that a dialect can name them the
    way its API does (`worded`); the core's own `message` names them as the core does.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self._template = Template(message) if field is not None else None
        super().__init__(message if self._template is None else self.worded({}))

    def worded(self, names: Mapping[str, str]) -> str:
        """The message with each input it names called as `names` says, else by its core name."""
        if self._template is None:
            return self.message
        return self._template.safe_substitute({name: names.get(name, name)
                                               for name in self._template.get_identifiers()})


class TooLarge(InvalidInput):
    """Raised when a body or payload is larger than the server accepts."""


class Conflict(ModelbayError):
    """Raised when the input clashes with what exists (a duplicate name, a thing in use)."""


class Unauthorized(ModelbayError):
    """Raised when no valid credential was given."""


class Forbidden(ModelbayError):
    """Raised when a valid credential reaches for another project."""


class Unavailable(ModelbayError):
    """Raised when a version cannot serve requests (not built, or its build failed)."""


class StatusChanged(ModelbayError):
    """Raised when a compare-and-set status change lost to another writer."""

    def __init__(self, entity_id: str, expected: str) -> None:
        super().__init__(f"status of {entity_id} is no longer {expected}")
        self.entity_id = entity_id
        self.expected = expected


class IllegalMove(ValueError):
    """Raised for a status change its state machine does not allow: a bug in the core, never the
    caller's input (so not a `ModelbayError`, which dialects answer as the caller's fault)."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        super().__init__(f"a {kind} may not go from {old} to {new}")
        self.kind = kind
        self.old = old
        self.new = new


def last_line(text: str | None) -> str:
    """The last non-blank line of a message (of a traceback: the exception), for a one-line log."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no reason given)"
