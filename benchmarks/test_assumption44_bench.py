"""assumption-4.4's limit level on the default problem: the unperturbed, balanced and independent stage-B runs of
every stage in ONE batched Rodas4 solve (what the check does), against two solves, the judged runs and the
independent ones (what a second protocol would cost if it were run on its own), side by side in one run.
``extra_info``: wall and CPU seconds of each, their ratio, the batch's gradient evaluations, torch threads.
Asserts that the joint and the split solves give the same endpoints, never a time."""

import time

import torch

from verifier.checks import _perturb as P
from verifier.checks import assumption44 as A44


def test_both_protocols_in_one_solve(benchmark, machine_info, toy_context):
    ctx = toy_context
    starts, no_decay = A44.stage_b_starts(ctx)
    assert not no_decay and {r.protocol for r in starts} == set(A44.Protocol)

    def solve(rows):
        U = torch.stack([starts[b].uv[0] for b in rows]).to(ctx.model.device)
        V = torch.stack([starts[b].uv[1] for b in rows]).to(ctx.model.device)
        wall, cpu = time.perf_counter(), time.process_time()
        _, traj = P.run_batch(ctx.model, U, V, [starts[b].duration for b in rows], ctx.config.solver, n_out=2,
                              loss=False)
        return time.perf_counter() - wall, time.process_time() - cpu, traj

    everything = list(range(len(starts)))
    judged = [b for b, r in enumerate(starts) if r.protocol.judged]
    independent = [b for b, r in enumerate(starts) if not r.protocol.judged]
    out = {}

    def run():
        out["joint"] = solve(everything)
        out["split"] = (solve(judged), solve(independent))

    benchmark.pedantic(run, rounds=1, iterations=1)
    joint, (first, second) = out["joint"], out["split"]
    machine_info.update({
        "runs": len(starts), "joint_wall_s": round(joint[0], 1), "joint_cpu_s": round(joint[1], 1),
        "split_wall_s": round(first[0] + second[0], 1), "split_cpu_s": round(first[1] + second[1], 1),
        "split_over_joint_cpu": round((first[1] + second[1]) / joint[1], 2),
        "joint_nfev_max": int(joint[2].nfev.max()),
        "split_nfev_max": [int(first[2].nfev.max()), int(second[2].nfev.max())]})
    end = joint[2].beta[:, -1]
    split = torch.empty_like(end)
    split[judged], split[independent] = first[2].beta[:, -1], second[2].beta[:, -1]
    assert all(s.value == "success" for s in joint[2].status)
    # every sample keeps its own step in the batch: the joint solve is the split one, to the solver's tolerance
    assert float(((end - split).norm(dim=1) / end.norm(dim=1)).max()) < 1e-5
