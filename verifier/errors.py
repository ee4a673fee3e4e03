"""One error type for bad input: it names the field and the allowed values (CLI exit code 2)."""


class InputError(ValueError):
    """Raised at the boundary when a user-supplied value is invalid."""

    def __init__(self, field: str, problem: str, allowed: str | None = None):
        self.field = field
        msg = f"{field}: {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)
        self._init_args = (field, problem, allowed)

    def __reduce__(self):  # pickled with its own arguments: it crosses from a worker process (runner.py)
        return type(self), self._init_args


class UserCodeError(InputError):
    """User code (a ``--model-file``'s import or factory) raised, called ``sys.exit`` or changed the working
    directory. Carries ``file`` and ``function`` (``None`` for the import), and ``seed`` when the factory was
    called with one, so that a caller (a survey's draw) can say which draw it was. Field ``--model-file``."""

    def __init__(self, file: str, function: str | None, problem: str, seed: int | None = None):
        self.file, self.function, self.seed, self.problem = file, function, seed, problem
        where = f"importing {file}" if function is None else f"{file}:{function}(" + (
            f"seed={seed})" if seed is not None else ")")
        super().__init__("--model-file", f"{where} {problem}")
        self._init_args = (file, function, problem, seed)


class UserCodeExit(RuntimeError):
    """A user's loss called ``sys.exit`` while a check evaluated it: an error of that check (an inconclusive
    result naming it), never the tool's exit code."""
