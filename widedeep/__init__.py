"""widedeep: Wide & Deep recommenders (Cheng et al., RecSys 2016) trained and served on Ray.

Importing the package is cheap on purpose: it pulls in no Ray, Torch, Triton or FastAPI and
does no work. Heavy imports live in the sub-packages that need them (``widedeep.train``,
``widedeep.serve``, ``widedeep.kernels``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
