"""The command line of every entry point: its parser and its one error path.

A user error (bad flag, missing or unreadable file, a dataset that cannot be trained on) is an
exception deriving from :class:`decision_transformer.errors.UserError` (at the bottom of the
package, so every layer can raise one); :func:`run_cli` turns it into one line on stderr,
``error: <problem>: <fix>``, and exit code 2, with no traceback. Anything else is a bug in this
code and keeps its traceback. Argument-parser errors take the same one-line form
(:class:`OneLineParser`), and :class:`HelpFormatter` shows each flag's default once.

    from decision_transformer.run.cli import run_cli
    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import UserError, one_line
from ..models.return_bins import AUTO_TARGET

USAGE_EXIT = 2  # what argparse uses for a bad command line, and so every user error here


def report(err: BaseException) -> int:
    print(f"error: {one_line(err)}", file=sys.stderr)
    return USAGE_EXIT


def run_cli(main: Callable[..., int | None], *args, **kwargs) -> int:
    """``main(*args)`` with user errors reported as one line and exit code 2."""
    try:
        return main(*args, **kwargs) or 0
    except UserError as err:
        return report(err)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``error: ... (see --help)``), exit code 2,
    like every other user error; argparse's own prints the usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"error: {one_line(message)} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' once: not when the help already names the default, nor for
    defaults that say nothing (None, False flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False
        if "default" in text.lower() or quiet or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def finite_float(value: str) -> float:
    """A flag's finite number (argparse reports the ValueError as an invalid value)."""
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return number


def target_return(value: str) -> float | str:
    """``--target_return`` (evaluate.py, evaluate_pretrained.py, export.py): a finite number,
    or ``auto`` (the model's own returns)."""
    if value == AUTO_TARGET:
        return value
    try:
        return finite_float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or auto (a model trained with --return_bins), got '{value}'"
        ) from None
