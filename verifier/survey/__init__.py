"""Surveys: how often do the paper's assumptions hold over random draws of a model family?

``run_survey(SurveyConfig(preset, n, ...))`` draws n problems (draw i at seed ``draw_seed(S, i)``), runs the
checks on each and returns :class:`SurveyResults` (rates with Wilson intervals, key-metric histograms, the
closest passes and every failure with the command that reproduces it); ``verifier survey`` on the command line.
The draws run on any ``concurrent.futures.Executor`` (local processes, a Dask cluster: docs/SURVEYS.md).
"""

from .config import SurveyConfig, draw_seed
from .results import SurveyResults, read_survey

__all__ = ["SurveyConfig", "SurveyResults", "draw_seed", "read_survey", "run_survey"]


def run_survey(config: SurveyConfig, executor=None, progress: bool = True, argv: list[str] | None = None,
               **kwargs) -> SurveyResults:
    """See :func:`verifier.survey.engine.run_survey` (imported lazily: it needs torch and the checks).
    ``executor``: any ``concurrent.futures.Executor`` (None: the draws run in this process)."""
    from .engine import run_survey as run

    return run(config, executor, progress=progress, argv=argv, **kwargs)
