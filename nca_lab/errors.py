"""The one exception type nca_lab reports to users as a single line."""


class ConfigError(ValueError):
    """A bad setting or input, caught before any compile and shown as one line.

    The entry points print ``error: <message>`` and exit with status 2 instead of a
    traceback, so the message must say what is wrong and, where it helps, how to fix it.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
