"""Hunts for violations of Assumptions 4.2-4.4 (``verifier.survey.hunt``): hypothesis searches teacher, data
and initialisation, steered by ``target`` on the check's key metric; a failure prints the shrunk problem as a
``verifier run`` command.

A hunt that finds a violation is a finding about the assumptions on random problems, not a regression, so
these are marked ``hunt`` and left out of the default run:
    python -m pytest -m hunt properties/test_hunt.py           # profile ci: small sizes, derandomized
    tox -e hunt                                                 # profile thorough: the paper's sizes, xdist
"""

import os

import pytest

from verifier.survey.hunt import HUNTED, SIZES, hunt, problems

pytestmark = pytest.mark.hunt
PROFILE = "thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else "ci"


@pytest.mark.parametrize("family", ["diag-linear", "toy-attention"])
@pytest.mark.parametrize("check", HUNTED)
def test_hunt(check, family):
    found = hunt(check, problems(family, SIZES[PROFILE][family]))
    assert found is None, found.report()
