"""Experiment loggers: one interface (``base.Logger``), each implementation a module (``logger=<name>``)."""
