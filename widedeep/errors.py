"""The exception hierarchy of widedeep. Every error a user can cause is one of these.

::

    WidedeepError
     ├── ConfigError            a YAML config / feature spec / --set override is invalid (names the key path)
     │    └── FeatureSpecError  the feature spec itself is invalid
     ├── DataError              input data is unusable (names the file, column and value)
     ├── KernelInputError       ids / offsets / weights handed to the embedding kernel are invalid
     ├── CheckpointError        a checkpoint or bundle is missing, corrupt or mismatched (names both sides)
     └── ServingError           a serving bundle cannot be loaded or a request cannot be served

Messages follow one shape: what is wrong, the offending value, what was expected.
"""

from __future__ import annotations


class WidedeepError(Exception):
    """Base class of every error widedeep raises on purpose."""


class ConfigError(WidedeepError, ValueError):
    """A configuration value is invalid; the message starts with its key path."""


class FeatureSpecError(ConfigError):
    """The feature spec is invalid; the message starts with its key path."""


class DataError(WidedeepError, ValueError):
    """Input data is unusable; the message names the file, column and value."""


class KernelInputError(WidedeepError, ValueError):
    """Indices, offsets or weights given to the embedding kernel are invalid."""


class CheckpointError(WidedeepError):
    """A checkpoint or serving bundle is missing, corrupt or does not match what loads it."""


class ServingError(WidedeepError):
    """A serving bundle or request cannot be served."""
