"""recstream encoders package."""
