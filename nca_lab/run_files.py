"""The names of the files a training run keeps in its run dir, for the modules that write them
and those that read them back (resume and skip, W&B, the CLI's checks).

A run dir also holds ``metrics.jsonl`` (:data:`nca_lab.log.metrics_file.METRICS`),
``checkpoints/`` (:data:`nca_lab.ckpt.CHECKPOINTS`), ``renders/``
(:data:`nca_lab.render.RENDERS`) and, while a job trains there, ``.lock``
(:data:`nca_lab.train.run_dir_lock.LOCK_FILE`).
"""

#: The resolved config the run trains under (:func:`nca_lab.train.run.run`): what a resume or
#: a skip compares the command's settings with, and what marks a dir as holding a run.
RESOLVED_CONFIG = "config_resolved.yaml"
#: Versions, git state and devices at the start (:func:`nca_lab.log.manifest.manifest`).
MANIFEST = "manifest.json"
#: The final metrics, written last (:meth:`nca_lab.train.trainer.Trainer.fit`): a completed run.
SUMMARY = "summary.json"
