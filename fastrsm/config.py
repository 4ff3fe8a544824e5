"""The settings of a run (fastrsm.settings), with every algorithm's own settings registered: the agents are
imported first, so that a Config has each algorithm's fields. The one module the rest of the library and its
users import for settings."""

from __future__ import annotations

from . import agents as _agents  # noqa: F401  (registers each algorithm's settings)
from .settings import *  # noqa: F403  (the public names, settings.__all__)
from .settings import __all__  # noqa: F401
