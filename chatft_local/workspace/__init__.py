"""The local ML workspace: base model, fine-tuning jobs, job events (and the registry, endpoints and model servers)."""
