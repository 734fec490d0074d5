"""Fixtures of the model tests (helpers for the head tests: ``heads_testing``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops on a shared 2-core box: one intra-op thread is ~20x faster than contention.

    Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
