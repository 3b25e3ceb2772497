"""Interoperability with the original Growing-NCA models: import, and export for the web demo.

The authors of "Growing Neural Cellular Automata" (Mordvintsev et al., Distill 2020)
released their trained models as 8-bit JSON for the article's WebGL demo and as TF.js
graph-models. Both import to a plain nca_lab :class:`~nca_lab.nca.NCA`; nca_lab models
export to the webgl8 format.
"""

from nca_lab.interop.detect import read_model
from nca_lab.interop.tfjs_graph import read_tfjs_graph
from nca_lab.interop.webgl8 import read_webgl8, to_webgl8

__all__ = ["read_model", "read_tfjs_graph", "read_webgl8", "to_webgl8"]
