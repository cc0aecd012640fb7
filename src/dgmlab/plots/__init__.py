r"""Every figure of dgmlab: each function takes arrays and returns a :class:`matplotlib.figure.Figure`.

The figures are grouped by subject: :mod:`~dgmlab.plots.images` (reconstructions, sample grids,
interpolations, completions), :mod:`~dgmlab.plots.latents` (latent scatters and the decoded 2-D latent
grid), :mod:`~dgmlab.plots.curves` (training curves, Monte-Carlo convergence),
:mod:`~dgmlab.plots.point_clouds` (3-D and 2-D point clouds), :mod:`~dgmlab.plots.density` (receptive fields and
per-pixel likelihoods of density models, grids of 2-D densities), :mod:`~dgmlab.plots.image_priors`
(eigenvectors of a patch mixture, likelihood against its size), :mod:`~dgmlab.plots.quantizers` (codebook
usage against the vocabulary size), :mod:`~dgmlab.plots.residual` (the estimators of invertible residual
blocks against their bounds) and :mod:`~dgmlab.plots.saving`; the
computations they rely on
(PCA, power-law fits) are in :mod:`dgmlab.numerics`, and the HTML of interactive views in
:mod:`~dgmlab.plots.templates`. Every figure is importable from here: ``from dgmlab import plots;
plots.image_grid(...)``.

Conventions
-----------
* Inputs are torch tensors (any device; they are detached and copied to the CPU), numpy arrays or
  nested lists. No function takes a model: the caller encodes and decodes, the plot only draws.
* Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never with ``pyplot``, so the
  library leaves the global pyplot state (current figure, backend) alone and works headless. A returned
  figure is drawn with ``fig.canvas.draw()``, saved with :func:`save_figure`, and shown inline by Jupyter.
* Images are intensities in [0, 1] drawn with ``Greys_r`` and a fixed colour scale (0 is black, 1 is
  white: white strokes on black, as in the problem set). Values outside [0, 1] raise ``ValueError``
  rather than being clipped silently, because they usually mean logits were passed where probabilities
  were meant (apply ``torch.sigmoid``) or an unbounded Gaussian mean needs ``.clamp(0, 1)``.
"""

from dgmlab.numerics import ArrayLike as ArrayLike  # the input type of every figure, as before the split
from dgmlab.numerics import fit_power_law, principal_components
from dgmlab.plots._common import IMAGE_COLORMAP as IMAGE_COLORMAP
from dgmlab.plots.curves import kl_estimator_convergence, loss_curves
from dgmlab.plots.density import density_grid, pixel_nll_heatmap, receptive_field_map
from dgmlab.plots.image_priors import mixture_eigenvectors, patch_log_likelihood_against_components, power_spectra
from dgmlab.plots.images import completions, image_grid, interpolation, reconstructions
from dgmlab.plots.latents import latent_grid_points, latent_manifold, latent_scatter, latent_vs_angles
from dgmlab.plots.point_clouds import equal_axis_limits, point_cloud_2d, point_cloud_3d, point_cloud_overlay
from dgmlab.plots.quantizers import codebook_usage_against_size
from dgmlab.plots.residual import estimator_cost_bars, inverse_error_curves, logdet_bias_curves, probe_variance_curves
from dgmlab.plots.saving import save_figure

__all__ = [
    "codebook_usage_against_size",
    "density_grid",
    "mixture_eigenvectors",
    "patch_log_likelihood_against_components",
    "power_spectra",
    "completions",
    "equal_axis_limits",
    "estimator_cost_bars",
    "fit_power_law",
    "image_grid",
    "interpolation",
    "inverse_error_curves",
    "kl_estimator_convergence",
    "latent_grid_points",
    "latent_manifold",
    "latent_scatter",
    "latent_vs_angles",
    "logdet_bias_curves",
    "loss_curves",
    "pixel_nll_heatmap",
    "point_cloud_2d",
    "point_cloud_3d",
    "point_cloud_overlay",
    "principal_components",
    "probe_variance_curves",
    "receptive_field_map",
    "reconstructions",
    "save_figure",
]
