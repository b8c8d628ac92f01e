"""The faust app the test apps (``tests/_*_app.py``, run as scripts) start from: in-memory
tables, quick group joins on the embedded broker, no web server."""

from __future__ import annotations

import tempfile
from typing import Any


def app_for_tests(app_id: str, bootstrap: str, **settings: Any) -> Any:
    """A ``faust.App`` for ``bootstrap`` with the test defaults, ``settings`` on top."""
    import faust

    defaults: dict[str, Any] = {
        "store": "memory://",
        "datadir": tempfile.mkdtemp(prefix=f"{app_id}-"),
        "broker_rebalance_timeout": 6.0,
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "stream_wait_empty": False,
    }
    return faust.App(app_id, broker=f"kafka://{bootstrap}", **{**defaults, **settings})
