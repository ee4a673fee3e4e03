"""One error type for bad input: it names the field and the allowed values (CLI exit code 2)."""


class InputError(ValueError):
    """Raised at the boundary when a user-supplied value is invalid."""

    def __init__(self, field: str, problem: str, allowed: str | None = None):
        self.field = field
        msg = f"{field}: {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)
