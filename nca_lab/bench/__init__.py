"""Benchmarks of nca_lab against its peers on the same configurations (``python -m nca_lab.bench``).

Each suite of :mod:`nca_lab.bench.suites` is built from nca_lab's own modules
(:mod:`nca_lab.bench.nca_lab_impl`) and by each peer asked for: the way CAX's example
notebooks build it (:mod:`nca_lab.bench.cax_impl`), or a plain eager PyTorch NCA on the CPU
(:mod:`nca_lab.bench.torch_impl`); :mod:`nca_lab.bench.measure` times them in one process,
interleaving their steps so that load from other processes hits all alike, and
:mod:`nca_lab.bench.report` prints the table and writes the JSON records.
"""
