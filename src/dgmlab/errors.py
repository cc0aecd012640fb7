"""Every error dgmlab raises on purpose, in one place.

Each one is a mistake a user can fix, and its message says what is wrong and how to fix it. They share the
base :class:`DgmlabError`, so the command line reports any of them on one line (``dgmlab train: error: ...``)
instead of a traceback; each also keeps the built-in class it has always had (``ValueError`` for bad values,
``RuntimeError`` for a state that cannot go on), so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class DgmlabError(Exception):
    """Base of every error that dgmlab raises for a mistake the user can fix."""


class ConfigError(DgmlabError, ValueError):
    """A configuration value is missing or invalid; the message names the key and the valid choices."""


class ModelConfigError(DgmlabError, ValueError):
    """A model was constructed with arguments that cannot work; the message says how to fix them."""


class CapabilityError(DgmlabError, ValueError):
    """A model was asked for something it cannot do (sample without a prior, condition without labels...)."""


class DgmlabDataError(DgmlabError, RuntimeError):
    """Data could not be loaded or is not what it should be."""


class ImageFileError(DgmlabError, ValueError):
    """An image file cannot be used (missing, empty, not an image, colour, transparent, too small); the message
    says which and how to fix it."""


class MnistNotFoundError(DgmlabDataError):
    """No verified copy of MNIST was found; the message lists what was tried and how to provide one."""


class CheckpointError(DgmlabError, RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model; the message says which file."""


class TrainingError(DgmlabError, RuntimeError):
    """Training cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    """A loss term became NaN or infinite."""


class RunExistsError(TrainingError):
    """The run directory already holds a run: resume it, or replace it on purpose."""


class RunLockedError(TrainingError):
    """Another process is using the run directory."""


__all__ = [
    "CapabilityError",
    "CheckpointError",
    "ConfigError",
    "DgmlabDataError",
    "DgmlabError",
    "ImageFileError",
    "MnistNotFoundError",
    "ModelConfigError",
    "NonFiniteLossError",
    "RunExistsError",
    "RunLockedError",
    "TrainingError",
]
