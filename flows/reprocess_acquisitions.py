"""`reprocess-acquisitions`: after a new champion, process every announced acquisition again
(its predictions are keyed on the model, so they are recomputed; nothing else is lost)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from .process_acquisition import process_acquisition


@flow(name="reprocess-acquisitions", flow_run_name="reprocess {landing} · {config_name}",
      description="Every acquisition announced so far, processed again (after a new champion).")
def reprocess_acquisitions(landing: str, config_name: str = "gala", record: str | None = None,
                           data_roots: list[str] | None = None) -> list[dict]:
    record_file = Path(record) if record else Path(landing).resolve() / ".lsdflow-announced.json"
    paths = sorted(json.loads(record_file.read_text())) if record_file.is_file() else []
    return [process_acquisition(path=p, config_name=config_name, data_roots=data_roots) for p in paths
            if Path(p).exists()]
