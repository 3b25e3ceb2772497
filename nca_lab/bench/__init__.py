"""Benchmarks of nca_lab against CAX on the same configurations (``python -m nca_lab.bench``).

Each suite of :mod:`nca_lab.bench.suites` is built twice, once from nca_lab's own modules
(:mod:`nca_lab.bench.nca_lab_impl`) and once the way CAX's example notebooks build it
(:mod:`nca_lab.bench.cax_impl`); :mod:`nca_lab.bench.measure` times both in one process,
interleaving their steps so that load from other processes hits both alike, and
:mod:`nca_lab.bench.report` prints the table and writes the JSON records.
"""
