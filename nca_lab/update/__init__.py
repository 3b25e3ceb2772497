"""Update modules: how a cell changes its state from its perception.

One class per file; configs name them by module path (``nca_lab.update.residual.ResidualUpdate``),
so a new variant is one module, one yaml in ``conf/update/`` and one test file.
"""

from nca_lab.update.base import Update

__all__ = ["Update"]
