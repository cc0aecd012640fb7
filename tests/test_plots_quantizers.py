"""The codebook-usage figure: one line per quantizer in each of its three panels, the numbers written on it."""

from __future__ import annotations

import pytest

from dgmlab import plots

ROWS = [{"quantizer": q, "K": k, "usage": u, "perplexity": p, "reconstruction": r}
        for q, k, u, p, r in [("vq", 64, 0.5, 20.0, 80.0), ("vq", 256, 0.2, 30.0, 78.0),
                              ("fsq", 64, 1.0, 50.0, 82.0), ("fsq", 240, 0.9, 150.0, 79.0)]]


def test_each_panel_has_a_line_per_quantizer_and_the_values():
    figure = plots.codebook_usage_against_size(ROWS, title="usage")
    usage, perplexity, reconstruction = figure.axes
    for ax in figure.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["vq", "fsq"]
        assert ax.get_xscale() == "log"
    assert list(usage.get_lines()[1].get_ydata()) == [1.0, 0.9]
    assert list(perplexity.get_lines()[0].get_ydata()) == [20 / 64, 30 / 256]  # perplexity over K
    assert "0.50" in [text.get_text() for text in usage.texts]
    assert "82.0" in [text.get_text() for text in reconstruction.texts]
    assert "vocabulary size K" == usage.get_xlabel() and figure._suptitle.get_text() == "usage"


def test_rows_without_the_needed_values_are_refused():
    with pytest.raises(ValueError, match="no rows"):
        plots.codebook_usage_against_size([])
    with pytest.raises(ValueError, match="each row needs usage"):
        plots.codebook_usage_against_size([{"quantizer": "vq", "K": 4, "perplexity": 2, "reconstruction": 1}])
