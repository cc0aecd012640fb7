"""Figures of discrete latents: how much of a codebook a quantizer uses, and how well it reconstructs, against
the vocabulary size K."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from dgmlab.plots._common import new_figure

__all__ = ["codebook_usage_against_size"]


def codebook_usage_against_size(rows: Sequence[Mapping[str, float | str]],
                                title: str = "Codebook usage against vocabulary size") -> Figure:
    """Three panels against the vocabulary size K (log axis), one line per quantizer: the fraction of the K codes
    used on the test set, the perplexity of the test set's code histogram over K (1 = uniform use), and the
    test reconstruction error. ``rows``: one mapping per run with ``quantizer``, ``K``, ``usage`` (0..1),
    ``perplexity`` (codes) and ``reconstruction`` (nats per image)."""
    if not rows:
        raise ValueError("codebook_usage_against_size: no rows")
    missing = [key for key in ("quantizer", "K", "usage", "perplexity", "reconstruction") if key not in rows[0]]
    if missing:
        raise ValueError(f"codebook_usage_against_size: each row needs {', '.join(missing)}")
    figure = new_figure(12.0, 3.6)
    axes = figure.subplots(1, 3)
    quantizers = list(dict.fromkeys(str(row["quantizer"]) for row in rows))
    panels = (("usage", "fraction of the K codes used", lambda r: float(r["usage"])),
              ("perplexity", "test perplexity / K", lambda r: float(r["perplexity"]) / float(r["K"])),
              ("reconstruction", "test reconstruction (nats per image)", lambda r: float(r["reconstruction"])))
    for ax, (_, label, value) in zip(axes, panels, strict=True):
        for name in quantizers:
            mine = sorted((r for r in rows if r["quantizer"] == name), key=lambda r: float(r["K"]))
            ks, ys = [float(r["K"]) for r in mine], [value(r) for r in mine]
            ax.plot(ks, ys, "o-", label=name)
            for k, y in zip(ks, ys, strict=True):
                ax.annotate(f"{y:.2f}" if y < 10 else f"{y:.1f}", (k, y), textcoords="offset points",
                            xytext=(0, 5), ha="center", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vocabulary size K")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return figure
