"""nca_lab: Neural Cellular Automata research in JAX (flax.nnx), configured with Hydra.

Importing the package imports no JAX, so entry points can set JAX's environment first.
"""

__version__ = "0.1.0"
