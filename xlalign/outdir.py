"""Result directories of ``run`` and ``evaluate``: a job note names the job and the inputs that made it.

The note (``.xlalign-job.json``) is the first file a job writes and is marked complete after the last one. A
second job into the same directory therefore knows what is there: the same inputs, finished -> nothing is
recomputed ("already complete"); the same inputs, interrupted -> it resumes; other inputs, or results this
version cannot identify -> refused unless ``overwrite``, which first removes the earlier job's outputs so an old
report never stands beside a new table. Files xlalign did not write are never removed: such a directory is
refused whatever ``overwrite`` says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probes.data.files import write_text
from xlalign.errors import JobError, notice

NOTE = ".xlalign-job.json"


class ResultDir:
    """The output directory ``out`` of ``job`` run with ``settings`` (JSON-serialisable inputs), which may hold
    the files named in ``outputs``."""

    def __init__(self, out: Path, job: str, settings: dict, outputs: set[str]) -> None:
        self.out = Path(out)
        self.job = job
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the note
        self.outputs = set(outputs)

    def _note(self) -> dict | None:
        try:
            note = json.loads((self.out / NOTE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return note if isinstance(note, dict) else None

    def _differences(self, note: dict) -> list[str]:
        before = note.get("settings", {})
        keys = sorted(set(before) | set(self.settings))
        return [
            f"{key}: {before.get(key)!r} there, {self.settings.get(key)!r} now"
            for key in keys
            if before.get(key) != self.settings.get(key)
        ]

    def check(self, overwrite: bool) -> bool:
        """Decide what to do with ``out`` before anything is written; True when it already holds this job,
        complete (nothing to do). Raises :class:`JobError` for foreign files, or for another job's results
        without ``overwrite``."""
        present = sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []
        note = self._note()
        if note is not None and note.get("job") != self.job:
            raise JobError(
                f"{self.out} holds an `xlalign {note.get('job')}` result, not `xlalign {self.job}`; "
                "choose another --out"
            )
        foreign = [name for name in present if name not in self.outputs | {NOTE}]
        if foreign:
            raise JobError(
                f"{self.out} holds files that xlalign did not write ({', '.join(foreign[:5])}); choose another --out"
            )
        if not present:
            return False
        if note is None:
            problem = "results of an earlier xlalign run whose inputs it does not record"
        else:
            differences = self._differences(note)
            if not differences:
                if note.get("complete") and not overwrite:
                    notice(
                        f"{self.out} already holds this {self.job}, complete (same model, corpus and options): "
                        "nothing recomputed; pass --overwrite (overwrite=True) to compute it again"
                    )
                    return True
                return False if not overwrite else self._clear(present)
            problem = "results of other inputs (" + "; ".join(differences[:4]) + ")"
        if not overwrite:
            raise JobError(
                f"{self.out} holds {problem}; pass --overwrite (overwrite=True) to replace them, or "
                "choose another --out"
            )
        return self._clear(present)

    def _clear(self, present: list[str]) -> bool:
        for name in present:
            path = self.out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return False

    def start(self) -> None:
        """Create ``out`` and note this job as started (the first file written)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._write(complete=False)

    def finish(self) -> None:
        """Mark the job complete (after its last output)."""
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        write_text(
            self.out / NOTE, json.dumps({"job": self.job, "settings": self.settings, "complete": complete}, indent=1)
        )
