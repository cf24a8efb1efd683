"""The user-error types every layer raises, at the bottom of the package so any layer may import
them (data/, training/, models/ as well as run/ and the scripts).

A user error (bad flag, missing or unreadable file, a dataset that cannot be trained on) is an
exception deriving from :class:`UserError` whose message names the problem and the fix on one
line; the command-line wrapper that turns it into ``error: ...`` and exit code 2 is
:mod:`decision_transformer.run.cli`.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the project's user-error types (ConfigError, DatasetError, CheckpointError, ...):
    the message names the problem and the fix, on one line."""


class ConfigError(UserError, ValueError):
    """A bad flag or flag combination, reported before any work starts."""


class DatasetError(UserError, ValueError):
    """A dataset that cannot be trained on; the message names the problem and the fix."""


def one_line(message: object, limit: int | None = None) -> str:
    """``message`` flattened to one line (an exception's own text may span several), cut to
    ``limit`` characters if given (for a third-party message quoted inside ours)."""
    text = " ".join(str(message).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
