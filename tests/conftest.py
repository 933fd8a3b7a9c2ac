"""Fixtures shared by the tests."""

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # A seed per test, stable from run to run, so a failure can be replayed.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
