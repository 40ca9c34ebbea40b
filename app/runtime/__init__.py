"""Where functions run: the ``Runtime`` protocol and its implementations."""

from app.runtime.base import (
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
)

__all__ = [
    "ContainerSpec",
    "ContainerState",
    "ImageNotFound",
    "Runtime",
    "RuntimeError_",
    "RuntimeUnavailable",
]
