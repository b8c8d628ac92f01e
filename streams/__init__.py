"""recstream streams package."""
