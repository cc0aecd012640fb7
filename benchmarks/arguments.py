"""Argument types and the result file the benchmark scripts share. Imported by them (their folder is on
``sys.path`` when they run); not a benchmark itself."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any


def numbers(cast):
    """An argparse type for values separated by commas, each converted by ``cast``."""
    def parse(text: str):
        try:
            return [cast(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected values separated by commas, got {text!r}") from None
    return parse


def write_rows(out: Path, setting: str, rows: list[dict[str, Any]]) -> None:
    """Write a benchmark's ``rows`` as JSON to ``out``, with its ``setting``, torch's version and the machine."""
    import torch

    result = {"setting": setting, "torch_version": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
