"""The Atari Decision Transformer (model, trainer); the package name follows the original repo."""

import _paths  # noqa: F401  (atari/ is on sys.path whenever this package is; adds gym/)
