"""Every random stream of a run comes from the run's one seed plus a named offset, listed here so that two
streams never share a generator by accident and a reader finds them all in one place (no torch here).

The data and teacher of a preset use ``seed + Preset.defaults["seed_offset"]`` (0 unless a preset documents
otherwise, see verifier/presets.py).
"""

INIT = 1_000_003  # theta0 = (u0, v0), the unit-scale initialisation scaled by alpha
DEFINITION_31 = 31  # the random probes (beta, directions, rescalings) of definition-3.1
STAGE_B_NOISE = 44  # the perturbed stage-B runs of assumption-4.4 (limit level)
FIGURE_9 = 43  # the plateau epochs and noise of assumption-4.3's Figure 9 protocol
FIGURE_10 = 10  # the onset epochs and noise of assumption-4.4's Figure 10 protocol
TRACK_SPLIT = 0  # verifier track: the digits train/test split
TRACK_INIT = INIT  # verifier track: the ViT's initial weights (before the init scale multiplies them)
TRACK_BATCHES = 2  # verifier track: the order of the minibatches
SYMMETRY = 420  # the random beta at which limit/symmetry.py tests whether two tied coordinates are exchangeable
