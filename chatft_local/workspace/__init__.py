"""The local ML workspace: base model, fine-tuning jobs, job events (and the registry, endpoints and model servers)."""

from .local import LocalWorkspace

__all__ = ["LocalWorkspace"]
