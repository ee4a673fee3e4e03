"""Hypothesis profiles: ``ci`` (fast, the default; derandomized so CI is reproducible) and ``thorough``
(the tox ``thorough`` env). Choose with HYPOTHESIS_PROFILE=thorough. Failing examples are printed with
their reproduction blob (``print_blob``) and stored in .hypothesis/ to be replayed first next time."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
