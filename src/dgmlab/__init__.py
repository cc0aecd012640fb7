"""dgmlab: the deep generative models of MIT 6.S978, runnable, tested, measured and explained."""

__version__ = "0.1.0"
