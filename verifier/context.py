"""The state one run of checks shares: the model, the config, provenance, and cached computations
(Algorithm 1's stages, the alpha-ladder trajectories) so checks that need the same thing compute it once."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
import torch

from . import seeds
from .config import DEFAULT_LOG_INV_ALPHAS, RunConfig
from .errors import InputError
from .presets import build_model


# The error budget of the alpha ladder (THEORY.md §3, "Error budget"). The sample at the smallest alpha, whose
# errors the verdicts compare with their tolerances, is solved at the run's SolverConfig (the floor). The others
# feed only theorem-4.5's trends and rates; the tightest tolerance they meet is beta within 1e-2 (relative), so
# a tenth of it, 1e-3, is a relative error 2e in beta from an error e <= 5e-4 in S, i.e. a local tolerance of
# 5e-4 / GLOBAL_ERROR_FACTOR (4) ~ 1e-4, absolute in S (rtol as the default's). A check that finds a quantity
# within 1 / RESOLUTION of a sample's Trajectory.solver_error() calls Context.refine_ladder, which re-solves
# that sample at the tolerance the quantity needs, then at the floor (never a guess: the verdict then reads the
# tighter solve).
LADDER_BUDGET = (1e-8, 1e-4)  # (rtol, atol)
RESOLUTION = 0.1


Progress = Callable[[str, "float | None"], None]
"""``progress(label, fraction)``: what a long computation is doing now ("alpha ladder", "Algorithm 1 stage
3") and how far it is (a fraction in [0, 1], or None when unknown). Called every few solver steps, from
the host, with plain Python values: it never forces a device synchronisation of its own."""


def no_progress(label: str, fraction: float | None = None) -> None:
    """The default :data:`Progress`: ignore."""


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def versions() -> dict[str, str]:
    from . import __version__

    return {"verifier": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}


class Context:
    """Built once per run; checks read ``model`` and ``config`` and share the cached properties.
    ``progress`` (a :data:`Progress`, default :func:`no_progress`) hears from the long computations: the
    runner sets it to update its bar while a check runs."""

    def __init__(self, config: RunConfig, model=None, argv: list[str] | None = None,
                 progress: Progress = no_progress):
        self.config = config
        self.model_given = model is not None  # a model object handed in (tests, the pytest plugin)
        self.progress = progress
        self.model = model if model is not None else build_model(
            config.preset, config.model, config.data, config.loss, config.seed, config.torch_device,
            config.model_file, keep_unmovable=config.device == "auto")
        # The device is resolved once, on the config (RunConfig.torch_device); a model handed in, or a user's
        # model that cannot move under --device auto, is on its own device. Every tensor of the run is created
        # on the model's device.
        self.device = self.model.device
        if config.optimizer.name == "sgd" and self.model.X is None:
            raise InputError("--optimizer", "sgd draws minibatches from the model's data set, and this model's loss "
                                            "holds its own data", "flow, gd, adam")
        self.provenance = {
            "command": " ".join(argv if argv is not None else sys.argv),
            "seed": config.seed,
            "init_seed": config.seed + seeds.INIT,
            "versions": versions(),
            "device": str(self.device),
            "dtype": "float64",
            "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tolerances": {"rtol": config.solver.rtol, "atol": config.solver.atol, "method": config.solver.method,
                           "ladder_budget": {"rtol": LADDER_BUDGET[0], "atol": LADDER_BUDGET[1],
                                             "resolution": RESOLUTION}},
            "threads": {"torch": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "")},
        }

    @functools.cached_property
    def problem(self) -> dict:
        """Where the model comes from, for results and the report: the preset and its description, the
        family and data file, or a user's module class and pairs (with source text) / loss function."""
        from .presets import PRESETS

        source = getattr(self.model, "source", None)
        if source is not None:
            return {"family": self.model.family, **source(), "model_file": self.config.model_file}
        out = {"kind": "built-in", "family": self.model.family, "class": type(self.model).__name__}
        if self.model_given:
            out["kind"] = "model object"
        elif self.config.preset in PRESETS and self.config.model is None:
            out.update(preset=self.config.preset, description=PRESETS[self.config.preset].description)
        elif self.config.data is not None:
            out.update(data=self.config.data)
        return out

    @property
    def log_inv_alphas(self) -> tuple[float, ...]:
        return self.config.log_inv_alphas or DEFAULT_LOG_INV_ALPHAS

    def theta0(self, count: int = 1, offset: int = 0) -> torch.Tensor:
        """``count`` unit-scale initialisations theta0 = (u0, v0) [count, n_params] from the init seed."""
        gen = torch.Generator().manual_seed(self.config.seed + seeds.INIT + offset)
        return torch.stack([self.model.init_params(1.0, gen) for _ in range(count)])

    @functools.cached_property
    def stages(self):
        """Algorithm 1 (the alpha -> 0 limit) on this model."""
        from .limit import algorithm1

        return algorithm1(self.model, progress=self.progress)

    def ladder_tolerances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rtol, atol) [B] of the ladder: the run's SolverConfig for the smallest alpha, LADDER_BUDGET (or the
        run's, if looser) for the others."""
        Ls = list(self.log_inv_alphas)
        solver = self.config.solver
        rtol = torch.full((len(Ls),), max(solver.rtol, LADDER_BUDGET[0]), dtype=torch.float64)
        atol = torch.full((len(Ls),), max(solver.atol, LADDER_BUDGET[1]), dtype=torch.float64)
        j = max(range(len(Ls)), key=lambda j: Ls[j])
        rtol[j], atol[j] = solver.rtol, solver.atol
        return rtol, atol

    def _solve_ladder(self, samples: list[int], tolerances=None):
        from .dynamics.flow import solve_flow

        rtol, atol = self.ladder_tolerances() if tolerances is None else tolerances
        theta0 = self.theta0(1).expand(len(samples), -1)
        return solve_flow(self.model, theta0, [self.log_inv_alphas[j] for j in samples], self.horizon,
                          self.config.solver, progress=lambda f: self.progress("alpha ladder", f),
                          tolerances=(rtol[samples], atol[samples]))

    @functools.cached_property
    def ladder(self):
        """Exact gradient flow for every alpha of the ladder, one batched call, to the rescaled horizon, at the
        error budget's tolerances (:meth:`ladder_tolerances`); :meth:`refine_ladder` tightens samples."""
        return self._solve_ladder(list(range(len(self.log_inv_alphas))))

    def refine_ladder(self, samples) -> bool:
        """Re-solve ladder samples tighter, in one batched call, and splice them into ``self.ladder``: the hook
        of the error budget (THEORY.md §3). ``samples``: a list (re-solve at the run's SolverConfig, the
        floor) or ``{sample: the solver error in S it may have}`` (re-solve at the atol whose bound
        ``Trajectory.solver_error()`` is half of it, never below the floor; a sample re-solved before goes to
        the floor). A check calls it when a quantity it reads is within 1 / RESOLUTION of a sample's solver
        error, and again after measuring anew, until nothing is unresolved or those samples are at the floor
        (at most two re-solves each). Returns whether anything was re-solved (False: all already that tight)."""
        from .dynamics.trajectory import GLOBAL_ERROR_FACTOR

        traj = self.ladder
        solver = self.config.solver
        wanted = samples if isinstance(samples, dict) else {j: 0.0 for j in samples}
        s_max = torch.nan_to_num(traj.b.abs(), nan=0.0).flatten(1).amax(1) * traj.log_inv_alpha
        rtol, atol = self.ladder_tolerances()
        budget = atol.clone()
        for j, allowed in wanted.items():
            refined = traj.atol is not None and float(traj.atol[j]) < float(budget[j])
            rtol[j] = solver.rtol
            atol[j] = solver.atol if refined else max(
                solver.atol, allowed / (2 * GLOBAL_ERROR_FACTOR) - solver.rtol * float(s_max[j]))
        loose = [j for j in wanted if traj.rtol is None or float(traj.rtol[j]) > rtol[j]
                 or float(traj.atol[j]) > atol[j]]
        if not loose:
            return False
        new = self._solve_ladder(loose, (rtol, atol))
        rows = torch.tensor(loose)
        fields = {}
        for name in ("beta", "b", "loss", "nfev", "njev", "crossing_tau", "crossing_sign", "rtol", "atol"):
            merged = getattr(traj, name).clone()
            spent = merged[rows] if name in ("nfev", "njev") else 0  # the work counts add up
            merged[rows] = getattr(new, name).to(merged.dtype) + spent
            fields[name] = merged
        status = list(traj.status)
        for k, j in enumerate(loose):
            status[j] = new.status[k]
        self.ladder = dataclasses.replace(traj, status=tuple(status), **fields)
        return True

    @functools.cached_property
    def horizon(self) -> float:
        """The rescaled horizon: the user's, else 1.25 x the last finite stage time of Algorithm 1."""
        if self.config.horizon is not None:
            return self.config.horizon
        finite = [s.T for s in self.stages.stages if np.isfinite(s.T)]
        return 1.25 * max(finite) if finite and max(finite) > 0 else 10.0
