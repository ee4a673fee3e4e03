"""``verifier survey`` from options to files: the executor (``--workers``, ``--scheduler``), the journal
(new, or ``--resume``), the run, and the output set (results.json, report.html, and the journal beside them).

Everything that can be refused is refused before any draw runs (exit 2, nothing written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from ..errors import InputError
from ..outputs import SET_FILES, WHERE, OutputSet
from ..pool import LocalPool, Workers, threads_per_worker, usable_cores
from .config import SurveyConfig
from .journal import NAME, Journal, JournalWriteError, refuse_existing
from .results import SurveyResults
from .workers import dask_executor


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
            try:
                shutil.copy2(journal, self.tmp / NAME)
            except OSError as exc:
                self.discard()
                raise InputError("--out", f"cannot write {self.target} ({exc.strerror or exc})", WHERE) from None
        return super().commit_texts(texts)


# Room a survey needs before it starts (statvfs of its folder). Measured on diag-linear: a journal line is 0.4 KiB
# with one check, 2.4 KiB with all six; results.json holds each draw again, with the summary (19 KiB for 2 draws
# of six checks), the set a copy of the journal, report.html ~130 KiB: 16 KiB a draw and 4 MiB bound them.
ROOM_PER_DRAW, ROOM_BASE = 16 * 1024, 4 * 1024 * 1024


def require_room(folder: Path, draws: int) -> None:
    """Refuse (InputError naming ``--out``) a survey whose folder's file system has less free space than its
    draws need (a rough bound, :data:`ROOM_PER_DRAW`): found now rather than after an hour of draws."""
    where = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        st = os.statvfs(where) if where is not None else None
    except OSError:
        return
    if st is None or st.f_blocks == 0:  # a file system that does not say
        return
    free, need = st.f_bavail * st.f_frsize, ROOM_BASE + ROOM_PER_DRAW * draws
    if free < need:
        raise InputError("--out", f"{where} has {free // 1024} KiB free; {draws} draws need about {need // 1024} KiB "
                                  "(journal, results.json, report.html)", "a folder on a file system with room")


def _local(workers: Workers, device) -> tuple[int, list[int] | None]:
    """``--workers`` -> (local processes, the GPU of each or None) on ``device`` (``SurveyConfig.torch_device``).
    auto: one per GPU when the survey runs on CUDA (one GPU: one worker, in this process, whose batched solves use
    it; processes sharing a GPU would compete for it), else one per CPU core."""
    if workers.count is None:
        if device.type == "cuda":
            import torch

            count = max(1, torch.cuda.device_count())
            return count, list(range(count))
    return workers.processes(usable_cores()), None


def _stopper(executor):
    """An exit handler: the executor shut down, waiting for its workers only when nothing went wrong."""
    def stop(kind, exc, tb) -> bool:
        executor.shutdown(wait=kind is None)
        return False

    return stop


def survey_session(config: SurveyConfig, output: OutputSet, workers: Workers | None = None,
                   scheduler: str | None = None, resume: bool = False, progress: bool = True,
                   argv: list[str] | None = None):
    """Run the survey and write its set; returns (results or None when nothing finished, written paths,
    interrupted?). Bad input, an unusable scheduler, a journal that cannot be trusted or written and a folder
    without room are refused before any draw runs (InputError); a journal write that fails, or a scheduler
    lost, mid-survey stops it with an InputError that says how ``--resume`` finishes it (every finished draw
    stays in the journal)."""
    from .engine import ExecutorLost, run_survey, survey_checks
    from .report import render_survey_html

    workers = workers if workers is not None else Workers(1)
    if scheduler is not None and workers.explicit and workers.field == "--workers":
        raise InputError("--workers", "give either --workers (local processes) or --scheduler (a Dask cluster)",
                         "--scheduler alone: the cluster's workers run the draws")
    count, gpus = _local(workers, config.torch_device) if scheduler is None else (1, None)
    if resume and output.target is None:
        raise InputError("--resume", "needs --out DIR, the folder of the survey to finish")
    if not resume:
        refuse_existing(output.target)
    checks = survey_checks(config)  # bad input (checks, model file) refused before any work
    with contextlib.ExitStack() as stack:
        contents = None
        if resume:
            journal, contents = Journal.resume(output.target, config, checks)
            stack.callback(journal.close)
            for line in contents.messages(journal.path):
                print(f"verifier: warning: {line}", file=sys.stderr)
        require_room(output.target or output.root, config.n - (len(contents.draws) if contents else 0))
        executor = None
        if scheduler is not None:
            executor = dask_executor(scheduler)
            stack.push(_stopper(executor))
        output.open()
        stack.callback(output.discard)
        if not resume:
            journal = Journal.create(output.target, config, checks)
            stack.callback(journal.close)
            stack.push(_drop_unused(journal))
        if count > 1:
            executor = LocalPool(count, threads_per_worker(count), gpus, field=workers.field)
            stack.push(_stopper(executor))
        stack.push(_resume_hint(journal))
        try:
            results: SurveyResults = run_survey(config, executor, progress=progress, argv=argv, journal=journal,
                                                done=list(contents.draws) if contents else [], checks=checks)
        except ExecutorLost as exc:
            raise InputError("--scheduler", f"lost the Dask scheduler at {scheduler} ({exc}) after "
                                            f"{_kept(journal, config)} finishes the survey (with a running "
                                            "scheduler, or --workers in place of --scheduler)") from None
        except JournalWriteError as exc:
            raise InputError("--out", f"{exc}; the survey stopped after {_kept(journal, config)}, once the journal "
                                      "can be written again, finishes the survey") from None
        if contents is not None and contents.skipped:
            results.survey.setdefault("resumed", {})["skipped_lines"] = list(contents.skipped)
        if not results.draws:
            return None, [], True
        journal.close()
        try:
            paths = output.commit_texts({"results.json": results.to_json(),
                                         "report.html": render_survey_html(results)})
        except InputError as exc:
            raise InputError("--out", f"{str(exc).removeprefix('--out: ')}; the journal keeps all "
                                      f"{journal.draws} draws: the same command with --out {journal.path.parent} "
                                      "--resume writes the report without running them again") from None
    return results, paths, bool(results.survey.get("interrupted"))


def _kept(journal: Journal, config: SurveyConfig) -> str:
    return (f"{journal.draws} of {config.n} draws; {journal.path} keeps them: the same command with --out "
            f"{journal.path.parent} --resume")


def _drop_unused(journal: Journal):
    """An exit handler: a new journal that holds no draw when the survey ends (refused, interrupted or stopped
    before any draw finished) is removed, with the folder it made: nothing to resume, nothing left behind."""
    def drop(kind, exc, tb) -> bool:
        if journal.draws == 0:
            journal.close()
            with contextlib.suppress(OSError):
                journal.path.unlink()
                if journal.made_folder:
                    journal.path.parent.rmdir()
        return False

    return drop


def _resume_hint(journal: Journal):
    """An exit handler: when the survey stops on an error, say where its finished draws are kept and how to
    finish it (an interrupt says so in results.json and the exit code; an error has only stderr)."""
    def hint(kind, exc, tb) -> bool:
        if kind is not None and not issubclass(kind, (KeyboardInterrupt, InputError)) and journal.draws:
            print(f"verifier: the journal {journal.path} keeps the {journal.draws} draw(s) that finished; after the "
                  f"fix, the same command with --out {journal.path.parent} --resume runs the others", file=sys.stderr)
        return False

    return hint
