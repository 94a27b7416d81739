"""What a person sees in the Prefect UI for each stage: a markdown summary and tables."""

from __future__ import annotations


def publish_summary(key: str, title: str, rows: dict, description: str = "") -> None:
    """A markdown artifact: a title and a two-column table of what happened."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"### {title}", "", "| | |", "|---|---|"]
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
