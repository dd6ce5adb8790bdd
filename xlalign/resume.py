"""Tables that jobs write unit by unit, so an interrupted job keeps what it finished and the same job resumes.

The CSV is rewritten (atomically) after each finished unit, beside a hidden ``.NAME.resume.json`` naming the
settings that made it and whatever else the job needs to go on; the note is removed when the job finishes. A job
with other settings never mixes its rows into it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from probes.data.files import write_text


class ResumableTable:
    """The CSV ``out`` of a job whose inputs are summed up by ``settings`` (JSON-serialisable)."""

    def __init__(self, out: Path, settings: dict) -> None:
        self.out = Path(out)
        self.note = self.out.with_name(f".{self.out.name}.resume.json")
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the note

    def _state(self) -> dict | None:
        if not (self.out.is_file() and self.note.is_file()):
            return None
        try:
            return json.loads(self.note.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None

    def interrupted(self) -> dict | None:
        """What an interrupted run of the same job left (``rows``: its table so far, and the job's extras)."""
        state = self._state()
        if state is None or state.get("settings") != self.settings:
            return None
        return {**state, "rows": pd.read_csv(self.out)}

    def made_by_another_job(self) -> bool:
        """Whether ``out`` is an interrupted table of a job with other settings."""
        state = self._state()
        return state is not None and state.get("settings") != self.settings

    def save(self, table: pd.DataFrame, **extra) -> None:
        """The table so far (and what the job needs to go on)."""
        write_text(self.out, table.to_csv(index=False))
        write_text(self.note, json.dumps({"settings": self.settings, **extra}))

    def finish(self, table: pd.DataFrame) -> None:
        write_text(self.out, table.to_csv(index=False))
        self.note.unlink(missing_ok=True)
