"""Fixtures shared by the tests, and the hypothesis profiles."""

import os
import zlib

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # only tests/test_properties.py needs it (the "test" extra has it)
    settings = None

if settings is not None:
    # "ci" (the default): the same examples every run (derandomize), few enough
    # that tests/test_properties.py takes well under a minute on 2 cores, and
    # no example database, so nothing is written into the checkout.
    # "long" (HYPOTHESIS_PROFILE=long): thousands of fresh random examples per
    # property, failures kept in .hypothesis/ (git-ignored) to replay them.
    # No deadline in either: the machine is shared, timings are noise here.
    settings.register_profile(
        "ci",
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "long",
        max_examples=3000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng(request):
    # A seed per test, stable from run to run, so a failure can be replayed.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=[True, False], ids=["packed", "blas"])
def path(request):
    """The test once on each CPU recurrent path: R packed for the hand-written
    kernel (skipped where the CPU has neither AVX-512F nor AVX2+FMA), and a
    BLAS call per step (test_packed.py)."""
    from lstm_ext import _core

    before = _core.set_packed_recurrent(request.param)
    try:
        if _core.packed_recurrent_enabled() != request.param:
            pytest.skip(reason="this CPU has neither AVX-512F nor AVX2+FMA: no packed kernel here")
        yield request.param
    finally:
        _core.set_packed_recurrent(before)
