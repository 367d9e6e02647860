"""Prune what can be pruned: hand-built networks with the patterns torch-pruning cannot prune as
predicted keep those units dense and say why; the rest prune to the predicted shapes."""

from __future__ import annotations

import time

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compressor.errors import UserError
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, measure_layer_shapes
from compressor.pruning.verify import Failure, culprits


def cbr(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class ConcatDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.a, self.b = cbr(32, 32), cbr(32, 32)
        self.dw = cbr(64, 64, g=64)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = self.pw(self.dw(x))
        return self.head(x.mean((2, 3)))


class ConcatGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.a, self.b = cbr(32, 32), cbr(32, 32)
        self.fc1, self.fc2 = nn.Conv2d(64, 16, 1), nn.Conv2d(16, 64, 1)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = self.pw(x * s)
        return self.head(x.mean((2, 3)))


class Ghost(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.primary = cbr(32, 32, k=1)
        self.cheap = cbr(32, 32, g=32)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        p = self.primary(x)
        x = torch.cat([p, self.cheap(p)], 1)
        return self.head(self.pw(x).mean((2, 3)))


class CSP(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 64)
        self.block = cbr(32, 32)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, 1)
        x = torch.cat([a, self.block(b)], 1)
        return self.head(self.pw(x).mean((2, 3)))


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 64)
        self.g = cbr(64, 64, k=1, g=4)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.g(self.stem(x))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.pw(x).mean((2, 3)))


class PartialResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.expand = cbr(32, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.expand(x)
        y = torch.cat([y[:, :32] + x, y[:, 32:]], 1)
        return self.head(y.mean((2, 3)))



class BreaksWhenNarrowed(nn.Module):
    """A plain conv net whose middle layer asserts its input width: pruning the unit feeding it
    makes the forward pass raise (as a hard-coded reshape in a user's model would)."""

    def __init__(self):
        super().__init__()
        self.stem, self.mid, self.tail = cbr(3, 32), cbr(32, 32), cbr(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        if x.shape[1] != 32:
            raise RuntimeError(f"expected 32 channels, got {x.shape[1]}")
        return self.head(self.tail(self.mid(x)).mean((2, 3)))


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CONFIG = PruningConfig(round_to=8)


def prunes_as_predicted(model: nn.Module):
    """The skeleton of `model`, after checking that every unit left at 0.5 gives the shapes it
    predicts and a network that runs."""
    skeleton = build_skeleton(model, X, CONFIG)
    policy = {name: 0.5 for name in skeleton.names}
    pruned = apply_policy(model, policy, X, CONFIG)
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, X)
    assert pruned(X).shape == (2, 10)
    return skeleton


@pytest.mark.parametrize(("net", "units"), [
    (ConcatDepthwise, ["stem.0", "dw.0", "pw.0"]),  # concat into a depthwise conv: by segment
    (ConcatGate, ["stem.0", "fc2", "fc1", "pw.0"]),  # concat into a squeeze-excite gate: likewise
    (Ghost, ["stem.0", "cheap.0", "pw.0"]),
    (Shuffle, ["stem.0", "g.0", "pw.0"]),
    (CSP, ["stem.0", "block.0", "pw.0"]),  # a split with a cross-stage concat: likewise
])
def test_concatenations_splits_ghost_modules_and_shuffles_are_searched_whole(net, units):
    torch.manual_seed(0)
    skeleton = prunes_as_predicted(net().eval())
    assert skeleton.excluded == () and list(skeleton.names) == units


def test_a_model_with_nothing_left_is_refused_in_seconds_naming_the_unit():
    start = time.monotonic()
    with pytest.raises(UserError, match=r"nothing in PartialResidual can be pruned.*expand\.0"):
        build_skeleton(PartialResidual().eval(), X, CONFIG)
    assert time.monotonic() - start < 10  # the bound for a refusal


def test_a_forward_pass_that_breaks_once_pruned_excludes_the_unit_behind_it():
    skeleton = prunes_as_predicted(BreaksWhenNarrowed().eval())
    assert [e.name for e in skeleton.excluded] == ["stem.0"]
    assert "no longer runs" in skeleton.excluded[0].reason
    assert "expected 32 channels" in skeleton.excluded[0].reason
    assert list(skeleton.names) == ["mid.0", "tail.0"]


def test_an_exception_inside_torch_pruning_becomes_an_exclusion(monkeypatch):
    # The real pruning, except that pruning the group rooted at 1.0 raises inside torch-pruning.
    real = tp.dependency.Group.prune

    def failing(self, *args, **kwargs):
        if self._DG._module2name.get(self[0].dep.target.module) == "1.0":
            raise IndexError("index 32 is out of bounds for dimension 0 with size 32")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tp.dependency.Group, "prune", failing)
    skeleton = prunes_as_predicted(nn.Sequential(cbr(3, 32), cbr(32, 32), cbr(32, 32),
                                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                 nn.Linear(32, 10)).eval())
    assert [e.name for e in skeleton.excluded] == ["1.0"]
    assert "torch-pruning fails to prune it (IndexError" in skeleton.excluded[0].reason


def test_culprits_halves_until_the_failing_units_are_found():
    calls = []

    def check(names):
        calls.append(tuple(names))
        bad = [n for n in names if n in ("c", "f")]
        return Failure("breaks", ()) if bad else None

    names = list("abcdefgh")
    found = culprits(names, check, Failure("breaks", ()))
    assert found == {"c": "breaks", "f": "breaks"}
    assert len(calls) < len(names) * 2  # halving, not one check per unit and pair


def test_culprits_keeps_dense_the_units_that_only_fail_together():
    def check(names):
        return Failure("breaks", ()) if {"a", "d"} <= set(names) else None

    found = culprits(list("abcd"), check, Failure("breaks", ()))
    assert set(found) == set("abcd") and all("only together" in r for r in found.values())


def test_checks_past_their_time_limit_keep_the_unverified_units_dense(monkeypatch):
    """Each check re-traces the model; a model whose checks would take minutes (timm's
    eca_vovnet39b: 31-46 s a check) is decided once the time limit has passed, not after them."""
    from compressor.pruning import verify

    real, checked = verify.prune_and_compare, []

    def slow(skeleton, model, x, config, names):
        checked.append(tuple(names))
        time.sleep(0.3)
        return real(skeleton, model, x, config, names)

    monkeypatch.setattr(verify, "prune_and_compare", slow)
    model = BreaksWhenNarrowed().eval()
    skeleton = verify.trace_skeleton(model, X, CONFIG)
    # Time for the first check (which fails: stem.0 breaks the forward pass) and one more.
    start = time.monotonic()
    with pytest.raises(UserError, match=r"nothing in BreaksWhenNarrowed .*not verified: checking "
                                        r"the units did not finish in 0 s \(2 checks"):
        verify.verify_skeleton(skeleton, model, X, CONFIG, time_limit=0.45)
    assert len(checked) == 2 and time.monotonic() - start < 0.45 + 0.3 + 1.0
    # Without the limit the same model keeps only stem.0 dense.
    assert [e.name for e in verify.verify_skeleton(skeleton, model, X, CONFIG).excluded] == \
        ["stem.0"]


def test_a_unit_found_before_the_time_limit_keeps_its_reason_and_the_unconfirmed_rest_stays_dense(
        monkeypatch):
    from compressor.pruning import verify

    model = BreaksWhenNarrowed().eval()
    skeleton = verify.trace_skeleton(model, X, CONFIG)
    # Checks: all three units (fail), stem.0 alone (fails), mid.0 + tail.0 (pass); the limit
    # passes before the last check, which would confirm mid.0 and tail.0 together.
    clock = iter([0.0, 0.0, 0.0, 0.0, 1e9])
    monkeypatch.setattr(verify.time, "monotonic", lambda: next(clock))
    with pytest.raises(UserError) as refused:
        verify.verify_skeleton(skeleton, model, X, CONFIG, time_limit=60.0)
    said = str(refused.value)
    assert "stem.0: the network no longer runs once it is pruned" in said
    assert "mid.0: not verified: checking the units did not finish in 60 s (3 checks" in said
    assert "tail.0: not verified" in said
