"""recstream stores package."""
