"""The errors edgeoss reports to a user: one line each, exit code 2 at the CLI."""


class EdgeossError(Exception):
    """A problem with the user's input or environment, told in one line."""

    exit_code = 2


class SpecError(EdgeossError):
    """A config that does not describe a valid gpt-oss model."""


class CheckpointError(EdgeossError):
    """A checkpoint folder or file that is not what it claims to be.

    The message names the file, the tensor (when there is one) and what was expected.
    """

    def __init__(self, where: str, problem: str, tensor: str | None = None):
        self.where, self.problem, self.tensor = where, problem, tensor
        at = f"{where}: {tensor}" if tensor else where
        super().__init__(f"{at}: {problem}")


class TokenizerError(EdgeossError):
    """A missing or altered vocabulary file, or an unreadable chat template."""


class UsageError(EdgeossError):
    """A bad option value (a size string, a device name, ...)."""
