"""Argument types the benchmark scripts share. Imported by them (their folder is on ``sys.path`` when they run);
not a benchmark itself."""

from __future__ import annotations

import argparse


def numbers(cast):
    """An argparse type for values separated by commas, each converted by ``cast``."""
    def parse(text: str):
        try:
            return [cast(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected values separated by commas, got {text!r}") from None
    return parse
