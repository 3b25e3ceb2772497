"""Perceive modules: how a cell senses its neighbourhood (3x3 in the shipped ones; any reach works).

One class per file; configs name them by module path (``nca_lab.perceive.sobel.SobelPerceive``),
so a new variant is one module, one yaml in ``conf/perceive/`` and one test file
(``tests/perceive/test_<name>.py``).
"""

from nca_lab.perceive.base import Perceive

__all__ = ["Perceive"]
