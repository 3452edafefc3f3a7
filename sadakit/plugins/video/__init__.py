"""Built-in plugins for video pipelines."""
