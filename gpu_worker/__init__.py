"""The GPU worker: renders jobs from the model streams with resident diffusers pipelines."""
