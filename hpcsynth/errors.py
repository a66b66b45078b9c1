"""The project's exceptions. The library raises these; the CLI turns them into one line and exit 2."""


class HpcsynthError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(HpcsynthError):
    """A config file or key is missing, unknown or of the wrong type."""


class InputError(HpcsynthError):
    """A corpus file or record cannot be read."""


class RunError(HpcsynthError):
    """A run directory is missing, unplanned or inconsistent."""


class EngineError(HpcsynthError):
    """A generation engine could not be built or failed for good."""


class MissingDependency(HpcsynthError):
    """An optional library (an extra of pyproject.toml) is absent or broken; the message names the pip command."""
