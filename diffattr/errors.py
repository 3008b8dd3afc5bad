"""Errors shared across the DAG-time modules, in a leaf module that imports nothing of ours.

:mod:`diffattr.config` re-exports :class:`ConfigError` (``from diffattr.config import ConfigError``
keeps working); :mod:`diffattr.data.sizes` and :mod:`diffattr.sweeps`, which :mod:`diffattr.config`
itself calls, import it from here, so no import cycle runs through the config (issue 15).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, stated in one sentence that names the key."""
