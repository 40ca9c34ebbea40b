"""The control plane: accepts runs, drives the runtime, reports lifecycle events."""

from app.control.errors import FieldError, RunNotFound
from app.control.service import ControlPlane

__all__ = ["ControlPlane", "FieldError", "RunNotFound"]
