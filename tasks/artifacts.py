"""What a person sees in the Prefect UI for each stage: a markdown summary and tables."""

from __future__ import annotations

import hashlib
from pathlib import Path


def volume_key(kind: str, container) -> str:
    """An artifact key for one volume: "<kind>-<volume name>-<6 hex of its full path>",
    short and readable, and distinct for volumes of the same name in different places."""
    path = str(Path(str(container)).resolve())
    return _artifact_key(f"{kind}-{Path(path).name}-{hashlib.sha256(path.encode()).hexdigest()[:6]}")


def embedded_picture(path, width: int = 480) -> str:
    """A picture as markdown a browser shows (a data URI of a JPEG copy at most `width`
    pixels wide, tens of kB): the UI's users cannot open files on the server."""
    import base64
    import io

    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return f"![{Path(path).name}](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def publish_summary(key: str, title: str, rows: dict, description: str = "") -> None:
    """A markdown artifact: a title and a two-column table of what happened."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"### {title}", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows.items()]
    create_markdown_artifact("\n".join(lines), key=_artifact_key(key), description=description or title)


def publish_scores(key: str, scores: list[dict], best: dict) -> None:
    """VOI split/merge and ARAND per threshold as a table artifact."""
    from prefect.artifacts import create_table_artifact

    table = [
        {"threshold": r["threshold"], "voi_split": round(r["voi_split"], 4), "voi_merge": round(r["voi_merge"], 4),
         "voi_sum": round(r["voi_sum"], 4), "arand": round(r["arand"], 4),
         "best": "yes" if r["threshold"] == best["threshold"] else ""}
        for r in scores
    ]
    create_table_artifact(table, key=_artifact_key(key), description="VOI and adapted Rand error per threshold")


def _artifact_key(key: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")[:100] or "lsdflow"
