"""faust's Monitor off an app's sensors.

faust adds its ``Monitor`` to the sensors of every app, so it books every message and stream
event in and out, for faust's web stats. This project's workers serve none (their metrics are
their own), and the booking cost the interests worker ~4% of its time at full speed (py-spy).
"""

from __future__ import annotations

from typing import Any


def without_faust_monitor(app: Any) -> None:
    """Keep faust's Monitor off the app's sensors: it books every message and stream event
    in and out (~4% of the worker's time at full speed, py-spy), for faust's web stats, which
    the worker does not serve (its Prometheus metrics are its own). faust's direct calls to
    ``app.monitor`` (end offsets, commits) still reach it."""
    init_dependencies = app.on_init_dependencies

    def on_init_dependencies() -> Any:
        services = init_dependencies()  # adds the monitor to the sensors
        app.sensors.remove(app.monitor)
        return services

    app.on_init_dependencies = on_init_dependencies
