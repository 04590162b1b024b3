"""User-facing errors.

A :class:`CompressError` is a mistake the user can fix (bad recipe, missing data, wrong checkpoint). The CLI
prints its message alone and exits with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Any

__all__ = ["CompressError", "ConfigError", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


class CompressError(Exception):
    """An error caused by the user's input; its message says what was wrong and what was expected."""


class ConfigError(CompressError):
    """A recipe/config field holds a bad value.

    The message reads ``FILE: path.to.field: expected EXPECTED, got GOT``.
    """

    def __init__(self, field: str, expected: str, got: Any, *, file: str | None = None) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        self.file = file
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.file}: " if self.file else ""
        got = self.got if isinstance(self.got, str) and self.got.startswith("<") else repr(self.got)
        return f"{where}{self.field}: expected {self.expected}, got {got}"

    def located(self, file: str | None = None, prefix: str = "") -> "ConfigError":
        """Return a copy whose field path is prefixed and whose file is set (used while descending a recipe)."""
        field = f"{prefix}.{self.field}" if prefix and self.field else (prefix or self.field)
        return ConfigError(field, self.expected, self.got, file=file or self.file)
