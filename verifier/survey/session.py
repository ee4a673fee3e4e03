"""``verifier survey`` from options to files: the executor (``--workers``, ``--scheduler``), the journal
(new, or ``--resume``), the run, and the output set (results.json, report.html, and the journal beside them).

Everything that can be refused is refused before any draw runs (exit 2, nothing written).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from ..errors import InputError
from ..outputs import SET_FILES, OutputSet
from .config import SurveyConfig
from .journal import NAME, Journal, refuse_existing
from .results import SurveyResults


class SurveyOutput(OutputSet):
    """A survey's output set: results.json and report.html (written whole, as a run's) with the journal
    draws.jsonl beside them, which a commit carries into the new set."""

    @classmethod
    def for_survey(cls, out: str | None, root: str) -> "SurveyOutput":
        """``--out`` checked as for a run; a folder that holds a survey's journal (and nothing but a previous
        set besides) is accepted too: it is the folder to resume, or to refuse without --resume."""
        folder = None if out is None else Path(out)
        if folder is not None and not folder.is_symlink() and folder.is_dir() and (folder / NAME).is_file():
            held = {e.name: e.is_file() and not e.is_symlink() for e in folder.iterdir()}
            if not all(ok and name in (*SET_FILES, NAME) for name, ok in held.items()):
                raise InputError("--out", f"{folder} holds other files besides a survey; refusing to replace them",
                                 "a new folder, or the folder of an earlier survey")
            return cls(folder, Path(root))
        plain = OutputSet.for_out(out, root=root)
        return cls(plain.target, Path(root))

    def commit_texts(self, texts: dict[str, str]) -> list[Path]:
        journal = self.target / NAME
        if self.tmp is not None and journal.is_file():
            shutil.copy2(journal, self.tmp / NAME)
        return super().commit_texts(texts)


def survey_session(config: SurveyConfig, output: OutputSet, workers="1", scheduler: str | None = None,
                   resume: bool = False, progress: bool = True, argv: list[str] | None = None):
    """Run the survey and write its set; returns (results or None when nothing finished, written paths,
    interrupted?)."""
    from .engine import survey_checks
    from .report import render_survey_html
    from .workers import LocalPool, dask_executor, describe_executor, local_workers, threads_per_worker

    if scheduler is not None and str(workers) != "1":
        raise InputError("--workers", "give either --workers (local processes) or --scheduler (a Dask cluster)",
                         "--scheduler alone: the cluster's workers run the draws")
    count, gpus = local_workers(workers, config.torch_device) if scheduler is None else (1, None)
    if resume and output.target is None:
        raise InputError("--resume", "needs --out DIR, the folder of the survey to finish")
    if not resume:
        refuse_existing(output.target)
    checks = survey_checks(config)  # bad input (checks, model file) refused before any work
    options = config.as_dict()
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler is not None:
            client, executor = dask_executor(scheduler)
            stack.callback(client.close)
        elif count > 1:
            executor = LocalPool(count, threads_per_worker(count), gpus)
            stack.callback(executor.shutdown)  # after an interrupt the engine has stopped it already
        else:
            executor = None
        if resume:
            journal, done = Journal.resume(output.target, options, checks)
        else:
            done = []
        output.open()
        stack.callback(output.discard)
        if not resume:
            journal = Journal.create(output.target, options, checks)
        stack.callback(journal.close)
        stack.push(_resume_hint(journal))
        info = describe_executor(executor, len(client.scheduler_info()["workers"]) if client else None, scheduler)
        from .engine import run_survey

        results: SurveyResults = run_survey(config, executor, progress=progress, argv=argv, journal=journal,
                                            done=done, checks=checks, executor_info=info)
        if isinstance(executor, LocalPool):
            results.survey["executor"] = describe_executor(executor)  # restarts counted at the end
        if not results.draws:
            if not resume:  # nothing finished: no journal left behind either
                journal.close()
                journal.path.unlink(missing_ok=True)
            return None, [], True
        journal.close()
        paths = output.commit_texts({"results.json": results.to_json(), "report.html": render_survey_html(results)})
    return results, paths, bool(results.survey.get("interrupted"))


def _resume_hint(journal: Journal):
    """An exit handler: when the survey stops on an error, say where its finished draws are kept and how to
    finish it (an interrupt says so in results.json and the exit code; an error has only stderr)."""
    def hint(kind, exc, tb) -> bool:
        if kind is not None and not issubclass(kind, (KeyboardInterrupt, InputError)) and journal.path.exists():
            with contextlib.suppress(OSError):
                kept = max(0, len(journal.path.read_bytes().splitlines()) - 1)
                print(f"verifier: the journal {journal.path} keeps the {kept} draw(s) that finished; after the fix, "
                      f"the same command with --out {journal.path.parent} --resume runs the others", file=sys.stderr)
        return False

    return hint
