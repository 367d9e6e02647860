"""`--workers` end to end: a compress job on a real local Ray cluster of 2 workers through the
Python API, the one-line errors of the command line, and `--workers 1` never importing Ray."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import compressor
from compressor.cli import main, parse
from compressor.errors import UserError
from compressor.pipeline.compress import CompressConfig, FinalConfig, search_fields
from compressor.search.distributed import DistributedConfig
from compressor.search.evaluator import EvaluatorConfig


class SmallNet(nn.Module):
    """A user's network (sent to the workers by pickle: defined in an importable module)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


SMALL = CompressConfig(
    evaluator=EvaluatorConfig(search_images=64, bn_batches=2, batch_size=16),
    final=FinalConfig(candidates=1, candidate_steps=2, latency_blocks=2, recheck_rounds=0))


def _data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    return torch.randn(n, 1, 16, 16, generator=gen) + labels.view(-1, 1, 1, 1) * 0.3, labels


def _compress(**kwargs):
    return compressor.compress(SmallNet(), train=_data(96, 0), val=_data(64, 1),
                               flops_budget=0.6, episodes=4, final_epochs=0, config=SMALL,
                               **kwargs)


def test_compress_on_two_ray_workers_then_the_cluster_is_gone():
    import ray

    result = _compress(method="ddpg", workers=2)
    assert result.verdict == "within budget" and result.evaluations == 4
    search = result.report["search"]
    assert search["workers"] == 2 and search["threads_per_worker"] >= 1
    assert search["worker_restarts"] == 0 and "driver" in search["latency_measured"]
    assert not ray.is_initialized()  # the local cluster it started is stopped


def test_workers_1_runs_in_process_without_importing_ray(monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    result = _compress(method="random")
    assert result.report["search"]["workers"] == 1 and result.evaluations == 4
    assert "ray" not in sys.modules


def _one_line_error(capsys, argv, tmp_path) -> str:
    # Refused before the dataset, the baseline or the search: none of them exists.
    code = main(["compress", *argv, "--data-dir", str(tmp_path / "no-data"), "--models-dir",
                 str(tmp_path / "models")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "models").exists()
    return err[0]


def test_workers_without_ray_is_a_one_line_error_naming_the_extra(monkeypatch, capsys,
                                                                 tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "pip install 'compressor[distributed]'" in _one_line_error(
        capsys, ["--workers", "2"], tmp_path)
    with pytest.raises(UserError, match=r"compressor\[distributed\]"):
        _compress(workers=2)


def test_an_unreachable_or_malformed_ray_address_is_a_one_line_error(capsys, tmp_path):
    # Port 1 on the loopback: nothing listens there.
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in _one_line_error(
        capsys, ["--workers", "2", "--ray-address", "127.0.0.1:1"], tmp_path)
    assert "HOST:PORT" in _one_line_error(
        capsys, ["--workers", "2", "--ray-address", "somewhere"], tmp_path)
    assert "--workers 2 or more" in _one_line_error(capsys, ["--worker-threads", "2"], tmp_path)


def test_the_flags_reach_the_config_and_a_resume_needs_the_same_worker_count():
    config = parse(["compress", "--workers", "3", "--ray-address", "auto",
                    "--worker-threads", "2"]).command.config
    assert config.distributed == DistributedConfig(workers=3, ray_address="auto",
                                                   worker_threads=2)
    assert search_fields(config)["rollout_batch"] == 3  # proposals come 3 at a time
    # Serial runs keep the search fields they had, so older run directories still resume; the
    # cluster and threads do not change the episodes.
    serial = parse(["compress"]).command.config
    assert "rollout_batch" not in search_fields(serial)
    assert set(search_fields(serial)) == set(search_fields(config)) - {"rollout_batch"}
