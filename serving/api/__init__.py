"""The HTTP API (FastAPI); ``create_app`` builds it around a replica's read models."""

from serving.api.app import create_app

__all__ = ["create_app"]
