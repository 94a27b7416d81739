"""`watch-acquisitions`: announce complete new (or changed) volumes of a landing directory
as `lsdflow.acquisition.created` events; `process-acquisition` deployments trigger on them."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.events import emit_event

from ..core.config import load_config
from ..core.io.acquisitions import announce_new, default_record

EVENT = "lsdflow.acquisition.created"


@flow(name="watch-acquisitions", flow_run_name="watch {landing}",
      description="One scan of the landing directory: an event for each new acquisition that has stopped changing.")
def watch_acquisitions(landing: str, record: str | None = None, settle_seconds: float = 60.0,
                       config_name: str = "gala") -> list[str]:
    """One scan: an event per acquisition that is complete (unchanged for `settle_seconds`)
    and new or changed since it was last announced. Returns the announced paths."""
    landing_dir = Path(landing).resolve()
    record_file = Path(record) if record else default_record(landing_dir, load_config(config_name).resolved_workspace)

    def emit(acquisition):
        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"lsdflow.acquisition.{acquisition.fingerprint}",
                      "prefect.resource.name": acquisition.path.name},
            payload={"path": str(acquisition.path), "fingerprint": acquisition.fingerprint, "config": config_name},
        )

    announced = [str(a.path) for a in announce_new(landing_dir, record_file, emit, settle_seconds)]
    get_run_logger().info("%d new acquisition(s) in %s", len(announced), landing_dir)
    return announced
