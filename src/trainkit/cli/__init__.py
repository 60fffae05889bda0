"""The ``trainkit`` command line (``trainkit --help``, ``python -m trainkit``)."""

from trainkit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
