"""A small real baseline shared by the integration tests, and their `slow` mark."""

from pathlib import Path

import pytest

from compressor.cli import main

SLICE = ["--train-size", "512", "--test-size", "256", "--search-size", "1000"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A resnet18 baseline trained for a few steps on a slice (real, small) and its models dir."""
    root = tmp_path_factory.mktemp("work")
    code = main(["pretrain", "--model", "resnet18", "--epochs", "1", "--lr", "0.3", "--models-dir",
                 str(root / "models"), *SLICE])
    assert code == 0
    return root




def pytest_collection_modifyitems(items):
    """Every test in this folder is `slow`: end to end on real data (the baseline's pretraining,
    compress runs, a Ray cluster, killed subprocesses). `pytest -m "not slow"` leaves them out."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)
