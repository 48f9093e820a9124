"""GPU tier: every test here is marked `gpu` and skipped where no CUDA device is visible."""

import pytest

from llmops.extras import has_cuda, has_cupy


def pytest_collection_modifyitems(config, items):
    gpu_present = has_cupy() or has_cuda()
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if not gpu_present:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
