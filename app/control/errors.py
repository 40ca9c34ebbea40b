"""Domain errors the HTTP layer maps to status codes."""


class FieldError(ValueError):
    """A request field is valid on its own but not acceptable here (e.g. above a maximum)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id
