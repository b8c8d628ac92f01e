"""recstream serving package."""
