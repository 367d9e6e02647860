"""Pruning: units, the skeleton's predicted shapes against really pruned networks, and baselines."""

from __future__ import annotations

import functools
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.errors import UserError
from compressor.pruning import (
    IMPORTANCES,
    PruningConfig,
    Skeleton,
    apply_policy,
    build_skeleton,
    global_ranking_policy,
    kept_count,
    kernel_channel_block,
    uniform_policy,
    uniform_policy_for_budget,
)
from compressor.pruning.importance import importance_label, needs_gradients
from compressor.pruning.shapes import measure_layer_shapes
from compressor.pruning.skeleton import _time_limit, trace
from tests.work import work_of

# resnet18: residual streams; mobilenet_v2: depthwise + residual; squeezenet1_0: concatenation and a
# conv classifier; regnet_x_400mf: grouped convs; efficientnet_b0: squeeze-excitation (a product).
MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_0", "regnet_x_400mf", "efficientnet_b0")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CONFIG = PruningConfig()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Pruning runs many tiny ops: with a training job on the other core, two threads made
    # apply_policy ~10x slower here (measured), one thread does not.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def model_of(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=10).eval()


@functools.cache
def skeleton_of(name: str) -> Skeleton:
    return build_skeleton(model_of(name), X, CONFIG)  # verified: one real prune at 0.5


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- kept counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "ratio", "kept"), [
    (64, 0.0, 64), (64, 0.5, 32), (64, 0.99, 8), (64, 0.05, 64), (64, 0.07, 56),
    (3, 0.5, 3), (8, 0.5, 8), (10, 0.0, 10), (10, 0.3, 8), (10, 0.05, 10),
    (24, 0.6, 8), (24, 0.5, 16), (24, 0.4, 16), (100, 0.5, 48),
    (1280, 0.001, 1280), (1280, 0.5, 640),
])
def test_kept_count_examples(channels, ratio, kept):
    assert kept_count(channels, 8, ratio) == kept


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2048), st.sampled_from([1, 4, 8, 16, 200]), st.floats(0, 0.999),
       st.floats(0, 0.999))
def test_kept_count_is_allowed_bounded_and_monotone(channels, step, r1, r2):
    low, high = sorted((r1, r2))
    kept = kept_count(channels, step, low)
    assert kept == channels or (kept % step == 0 and step <= kept < channels)
    assert kept_count(channels, step, high) <= kept
    assert kept_count(channels, step, 0.0) == channels


# --- units ----------------------------------------------------------------------------------------


def test_resnet18_has_12_units_4_of_them_residual_streams():
    units = skeleton_of("resnet18").units
    assert len(units) == 12
    assert [u.index for u in units] == list(range(12))
    assert sum(u.kind == "residual" for u in units) == 4
    assert units[0].name == "conv1" and units[0].channels == 64  # graph order: the stem first
    assert "fc" not in {u.name for u in units}


def test_mobilenet_v2_has_25_units_with_depthwise_and_residual_kinds():
    units = skeleton_of("mobilenet_v2").units
    assert len(units) == 25
    kinds = {u.kind for u in units}
    assert {"depthwise", "residual"} <= kinds
    assert all(u.macs > 0 and u.params > 0 for u in units)


def test_squeezenet_conv_classifier_is_never_a_unit():
    skeleton = skeleton_of("squeezenet1_0")
    assert "classifier.1" not in skeleton.names
    shapes = skeleton.layer_shapes(uniform_policy(skeleton, 0.7))
    assert shapes[-1].name == "classifier.1" and shapes[-1].out_channels == 10


def test_ignored_layers_drop_their_unit_and_unknown_names_are_user_errors():
    config = PruningConfig(ignored_layers=("layer1.0.conv1",))
    skeleton = build_skeleton(model_of("resnet18"), X, config, verify=False)
    assert len(skeleton.units) == 11 and "layer1.0.conv1" not in skeleton.names
    with pytest.raises(UserError, match="layer1.0.conv"):
        build_skeleton(model_of("resnet18"), X, PruningConfig(ignored_layers=("layer1.0.cnv1",)))


def test_bad_configs_are_user_errors():
    with pytest.raises(UserError, match="importance"):
        PruningConfig(importance="l3")
    with pytest.raises(UserError):
        PruningConfig(round_to=0)


def test_default_rounding_follows_the_cpu_kernels_channel_block():
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert kernel_channel_block() == (16 if avx512 else 8)
    assert PruningConfig().round_to == kernel_channel_block()
    assert PruningConfig(round_to=8).round_to == 8


# --- the key invariant: predicted shapes == really pruned shapes ----------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_skeleton_predicts_the_pruned_shapes(name):
    model = model_of(name)
    skeleton = skeleton_of(name)
    before = state(model)
    dense_out = model(X).shape

    # A seed per example rather than a list of floats: hypothesis starts from minimal examples
    # (all ratios 0), and three examples must each exercise every unit.
    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 0.9]))
    def check(seed, high):
        rng = random.Random(seed)
        policy = skeleton.policy_from_vector([rng.uniform(0.0, high) for _ in skeleton.units])
        pruned = apply_policy(model, policy, X, CONFIG)
        measured = measure_layer_shapes(pruned, X)
        assert skeleton.layer_shapes(policy) == measured
        assert skeleton.macs(policy) == sum(s.macs for s in measured)
        assert skeleton.params(policy) == sum(s.params for s in measured)
        with torch.no_grad():
            assert pruned(X).shape == dense_out
        for unit in skeleton.units:
            kept = skeleton.kept_channels(policy)[unit.name]
            assert kept == unit.channels or (kept % CONFIG.round_to == 0 and kept >= 8)

    check()
    assert same_state(model.state_dict(), before)  # the input is never touched


def test_flattened_channels_shrink_the_linear_input_by_their_spatial_size():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 32),
        torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    config = PruningConfig(round_to=8)  # the counts below are multiples of 8 on any CPU
    skeleton = build_skeleton(model, X, config)
    assert [(u.name, u.kind) for u in skeleton.units] == [("0", "conv"), ("5", "linear")]
    policy = {"0": 0.5, "5": 0.75}
    shapes = skeleton.layer_shapes(policy)
    assert [(s.in_channels, s.out_channels) for s in shapes] == [(3, 8), (32, 8), (8, 10)]
    assert measure_layer_shapes(apply_policy(model, policy, X, config), X) == shapes


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "regnet_x_400mf"])
def test_ratio_zero_keeps_the_model_identical(name):
    model, skeleton = model_of(name), skeleton_of(name)
    zero = uniform_policy(skeleton, 0.0)
    pruned = apply_policy(model, zero, X, CONFIG)
    assert skeleton.layer_shapes(zero) == skeleton.dense_shapes == measure_layer_shapes(pruned, X)
    assert same_state(pruned.state_dict(), model.state_dict())
    assert skeleton.macs({}) == skeleton.macs(zero)


def test_input_model_is_untouched_in_train_mode_too():
    torch.manual_seed(1)
    model = torchvision.models.get_model("resnet18", num_classes=10).train()
    before = state(model)
    pruned = apply_policy(model, {"conv1": 0.5, "layer2.0.conv1": 0.3}, X, CONFIG)
    assert same_state(model.state_dict(), before)
    assert model.training and pruned.training
    assert all(p.requires_grad for p in pruned.parameters())
    assert pruned.conv1.out_channels == 32 and model.conv1.out_channels == 64


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_macs_and_params_fall_as_ratios_rise(name):
    skeleton = skeleton_of(name)
    macs = [skeleton.macs(uniform_policy(skeleton, r / 20)) for r in range(19)]
    params = [skeleton.params(uniform_policy(skeleton, r / 20)) for r in range(19)]
    assert all(a >= b for a, b in zip(macs, macs[1:], strict=False))
    assert all(a >= b for a, b in zip(params, params[1:], strict=False))
    assert macs[10] < 0.4 * macs[0]  # both sides of most layers shrink: ~quadratic


@pytest.mark.parametrize("cost", ["macs", "params"])
def test_skeleton_costs_are_plain_python_over_its_tables(cost):
    """The budget wall prices hundreds of policies an episode, so a cost must stay a loop over
    the skeleton's tables: counted, not timed (a time limit fails on a busy machine and lets a
    quadratic loop through on a quiet one). 10-12 lines per layer and unit today."""
    skeleton = skeleton_of("mobilenet_v2")
    work = work_of(getattr(skeleton, cost), uniform_policy(skeleton, 0.37))
    assert work.packages <= {"compressor", "builtins", "math"}, work.packages  # no torch
    assert work.lines <= 20 * (len(skeleton.dense_shapes) + len(skeleton.units))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "match"), [
    ({"conv9": 0.5}, "unknown unit 'conv9'.*layer1.0.conv1"),
    ({"conv1": 1.0}, r"outside \[0, 1\)"),
    ({"conv1": -0.1}, r"outside \[0, 1\)"),
    ({"conv1": math.nan}, r"outside \[0, 1\)"),
])
def test_bad_policies_are_one_line_user_errors(policy, match):
    skeleton = skeleton_of("resnet18")
    for call in (lambda: skeleton.macs(policy), lambda: skeleton.layer_shapes(policy),
                 lambda: apply_policy(model_of("resnet18"), policy, X, CONFIG)):
        with pytest.raises(UserError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def _permuted_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


def test_untraceable_model_is_a_user_error_naming_it(monkeypatch):
    # ShuffleNetV2 with its channel shuffle written as a permute (only a transpose is mapped):
    # torch-pruning's own reshape rule divides by zero on it while building the graph.
    from torchvision.models import shufflenetv2

    monkeypatch.setattr(shufflenetv2, "channel_shuffle", _permuted_shuffle)
    model = torchvision.models.get_model("shufflenet_v2_x1_0", num_classes=10)
    for call in (lambda: build_skeleton(model, X, CONFIG),
                 lambda: apply_policy(model, {}, X, CONFIG)):
        with pytest.raises(UserError, match="ShuffleNetV2") as info:
            call()
        assert "\n" not in str(info.value)


class _NeverTraced(torch.nn.Module):
    """swin_t's blocks without the type the up-front check knows: what a user's copy of
    shifted-window attention would look like to the tracer."""

    def __init__(self):
        super().__init__()
        swin = torchvision.models.get_model("swin_t", num_classes=10)
        self.patches, self.blocks = swin.features[0], swin.features[1]
        methods = {k: v for k, v in vars(type(self.blocks[0].attn)).items()
                   if k not in ("__dict__", "__weakref__")}
        users_attention = type("UsersWindowAttention", (torch.nn.Module,), methods)
        for block in self.blocks:
            block.attn.__class__ = users_attention

    def forward(self, x):
        return self.blocks(self.patches(x)).mean((1, 2))


def test_a_tracer_that_never_finishes_is_stopped_and_named():
    """torch-pruning's grouping loop never ends on shifted-window attention (and grows memory
    until the OOM killer): the time limit turns it into a one-line refusal. Run in a child with
    capped memory and a deadline, so a limit that fails fails this test, not the whole suite.
    The message is the time limit's own: neither the OOM killer nor the deadline ended it."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_pruning import _NeverTraced, X, CONFIG; "
            "from compressor.pruning.skeleton import trace; "
            "trace(_NeverTraced().eval(), X, CONFIG, time_limit=2)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
    assert "UserError: torch-pruning cannot trace _NeverTraced" in child.stderr, child.stderr[-2000:]
    assert "did not finish in 2 s" in child.stderr and child.returncode == 1


def test_the_time_limit_outlasts_a_swallowed_alarm():
    """The tracer runs the model inside a bare `except:`; one alarm caught there must not let
    the block run on: the second alarm stops the block, and nothing after it runs."""
    seen = []
    with pytest.raises(TimeoutError), _time_limit(0.2):
        try:
            time.sleep(5)
        except BaseException as swallowed:  # what torch-pruning's tracer does around the forward
            seen.append(type(swallowed))
        time.sleep(5)
        seen.append("ran on")
    assert seen == [TimeoutError]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_swin_is_refused_up_front_without_waiting_for_the_limit(monkeypatch):
    builds = []
    real = tp.DependencyGraph.build_dependency

    def build_dependency(self, *args, **kwargs):
        builds.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", build_dependency)
    model = torchvision.models.get_model("swin_v2_t", num_classes=10).eval()
    with pytest.raises(UserError, match="cannot trace SwinTransformer .*shifted-window"):
        trace(model, X, CONFIG)
    assert builds == []  # refused before the tracer started: no time limit to wait for
    trace(model_of("resnet18"), X, CONFIG)
    assert len(builds) == 1  # the spy sees a trace that does run


def test_the_time_limit_is_lifted_after_a_trace_that_finished():
    trace(model_of("resnet18"), X, CONFIG, time_limit=30)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left armed
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_taylor_without_data_is_a_user_error():
    with pytest.raises(UserError, match="calibration"):
        apply_policy(model_of("resnet18"), {"conv1": 0.5}, X, PruningConfig(importance="taylor"))


# --- importance criteria --------------------------------------------------------------------------


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_each_importance_prunes_to_the_predicted_shapes(importance, fmnist_loader):
    model, skeleton = model_of("resnet18"), skeleton_of("resnet18")
    config = PruningConfig(importance=importance)
    policy = uniform_policy(skeleton, 0.5)
    pruned = apply_policy(model, policy, X, config, calibration_batches=fmnist_loader)
    assert measure_layer_shapes(pruned, X) == skeleton.layer_shapes(policy)
    assert all(p.grad is None for p in pruned.parameters())


def test_l1_keeps_the_strongest_channels_of_the_group_and_random_is_seeded():
    model = model_of("squeezenet1_0")
    policy = {"features.0": 0.5}  # 96 -> 48 filters; the group is features.0 out + squeeze in

    def kept_weights(config):
        return apply_policy(model, policy, X, config).features[0].weight

    producer, consumer = model.features[0].weight, model.features[3].squeeze.weight
    scores = producer.abs().sum(dim=(1, 2, 3)) + consumer.abs().sum(dim=(0, 2, 3))
    strongest = torch.sort(torch.topk(scores, 48).indices).values
    assert torch.equal(kept_weights(PruningConfig(importance="l1")), producer[strongest])
    a = kept_weights(PruningConfig(importance="random", seed=1))
    b = kept_weights(PruningConfig(importance="random", seed=1))
    c = kept_weights(PruningConfig(importance="random", seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- baselines ------------------------------------------------------------------------------------


def test_uniform_policy_for_budget_meets_its_limit_tightly():
    skeleton = skeleton_of("mobilenet_v2")
    dense = skeleton.macs({})

    def cost(policy):
        return skeleton.macs(policy) / dense

    policy, ratio = uniform_policy_for_budget(skeleton, cost, 0.5)
    assert cost(policy) <= 0.5 and 0 < ratio <= 0.8
    assert cost(uniform_policy(skeleton, ratio - 1e-3)) > 0.5
    assert uniform_policy_for_budget(skeleton, cost, 1.0) == (uniform_policy(skeleton, 0.0), 0.0)
    with pytest.raises(UserError, match="cannot reach"):
        uniform_policy_for_budget(skeleton, cost, 0.01)


def test_global_ranking_policy_meets_its_limit_with_uneven_ratios():
    model, skeleton = model_of("resnet18"), skeleton_of("resnet18")
    dense = skeleton.macs({})

    def cost(policy):
        return skeleton.macs(policy) / dense

    policy = global_ranking_policy(model, X, CONFIG, cost, 0.5, max_ratio=0.8)
    assert set(policy) == set(skeleton.names)
    assert cost(policy) <= 0.5
    assert all(0.0 <= r <= 0.8 for r in policy.values())
    assert len({round(r, 3) for r in policy.values()}) > 3


# --- importance plug-ins --------------------------------------------------------------------------


class WeakestFirst(tp.importance.Importance):
    """A plug-in criterion: minus L2, so the weakest channels are kept (the opposite of l2)."""

    def __call__(self, group):
        return -tp.importance.GroupMagnitudeImportance(p=2)(group)


def test_an_importance_object_chooses_the_channels_and_keeps_the_predicted_shapes():
    model, skeleton = model_of("resnet18"), skeleton_of("resnet18")
    policy = uniform_policy(skeleton, 0.5)
    by_name = apply_policy(model, policy, X, PruningConfig(importance="l2"))
    same = apply_policy(model, policy, X,
                        PruningConfig(importance=tp.importance.GroupMagnitudeImportance(p=2)))
    weakest = apply_policy(model, policy, X, PruningConfig(importance=WeakestFirst()))
    assert same_state(same.state_dict(), by_name.state_dict())  # the object behind "l2" itself
    assert measure_layer_shapes(weakest, X) == skeleton.layer_shapes(policy)
    assert not torch.equal(weakest.conv1.weight, by_name.conv1.weight)
    # conv1 keeps 32 of 64 filters: l2 the strongest of its group, the plug-in the weakest.
    norms = model.conv1.weight.flatten(1).norm(dim=1)
    assert weakest.conv1.weight.flatten(1).norm(dim=1).mean() < norms.median()
    assert by_name.conv1.weight.flatten(1).norm(dim=1).mean() > norms.median()


def test_global_ranking_uses_an_importance_object_too():
    model, skeleton = model_of("resnet18"), skeleton_of("resnet18")
    dense = skeleton.macs({})

    def cost(policy):
        return skeleton.macs(policy) / dense

    weakest = global_ranking_policy(model, X, PruningConfig(importance=WeakestFirst()), cost, 0.5)
    assert cost(weakest) <= 0.5
    assert weakest != global_ranking_policy(model, X, CONFIG, cost, 0.5)


@pytest.mark.parametrize("importance", [3, "l3", None])
def test_an_importance_neither_named_nor_callable_is_a_user_error_listing_the_names(importance):
    with pytest.raises(UserError, match="l1, l2, bn, taylor, random") as info:
        PruningConfig(importance=importance)
    assert "\n" not in str(info.value)


def test_an_importance_objects_label_is_stable_across_instances():
    a = importance_label(tp.importance.GroupMagnitudeImportance(p=1))
    assert a == importance_label(tp.importance.GroupMagnitudeImportance(p=1))
    assert "p=1" in a and " at 0x" not in a
    assert importance_label("l2") == "l2"


def test_a_taylor_importance_object_gets_gradients_like_the_name(fmnist_loader):
    model, skeleton = model_of("resnet18"), skeleton_of("resnet18")
    dense = skeleton.macs({})

    def cost(policy):
        return skeleton.macs(policy) / dense

    by_object = PruningConfig(importance=tp.importance.GroupTaylorImportance())
    assert needs_gradients(by_object.importance) and needs_gradients("taylor")
    assert not needs_gradients("l2") and not needs_gradients(WeakestFirst())
    policy = global_ranking_policy(model, X, by_object, cost, 0.5,
                                   calibration_batches=fmnist_loader)
    assert policy == global_ranking_policy(model, X, PruningConfig(importance="taylor"), cost, 0.5,
                                           calibration_batches=fmnist_loader)
    with pytest.raises(UserError, match="calibration"):
        global_ranking_policy(model, X, by_object, cost, 0.5)
