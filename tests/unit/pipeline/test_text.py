"""A causal LM's task on real standard-library text: windows served as the pipeline's splits,
minus validation cross-entropy as the search score and the reward, LM-loss recoveries that lower
it on a pruned gpt_tiny, and the evaluator scoring episodes through them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compressor import pruning
from compressor.errors import UserError
from compressor.pipeline.text import (
    LATENCY_WORKLOADS,
    TextTask,
    TextTaskConfig,
    latency_example,
    lm_headline,
    text_dataset,
)
from compressor.search.env import Evaluation, reward_cross_entropy
from compressor.search.evaluator import EpisodeEvaluator, EvaluatorConfig
from compressor.training.language import evaluate_lm
from compressor.zoo.embedded import TinyGPT
from compressor.zoo.text import TextConfig, load_corpus

CPU = torch.device("cpu")
CONTEXT = 64


def small_gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(context=CONTEXT, width=64, layers=2, heads=2, mlp=128).eval()


@pytest.fixture(scope="module")
def dataset(stdlib_text):
    return text_dataset(stdlib_text, CONTEXT)


def test_splits_serve_shifted_int64_windows_counted_in_windows(dataset, stdlib_text):
    assert dataset.name == "stdlib" and dataset.num_classes == 256
    assert len(dataset.test) == (len(stdlib_text.test) - 1) // CONTEXT
    first = list(dataset.test.subset(10).batches(4))
    assert [len(x) for x, _ in first] == [4, 4, 2]  # a subset of 10 windows, in order
    inputs, targets = first[0]
    assert inputs.dtype == torch.int64 and inputs.shape == (4, CONTEXT)
    assert torch.equal(inputs[0, 1:], targets[0, :-1])
    assert torch.equal(torch.cat([x for x, _ in first]), torch.cat(
        [x for x, _ in dataset.test.batches(5, limit=2)]))  # the same windows every time
    shuffled = list(dataset.train.batches(8, shuffle=True, seed=3, limit=2))
    again = list(dataset.train.batches(8, shuffle=True, seed=3, limit=2))
    assert len(shuffled) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, again,
                                                                                strict=True))


def test_a_corpus_too_small_for_one_window_is_a_user_error():
    tiny = load_corpus(TextConfig(max_bytes=1000))  # 50 bytes of validation
    with pytest.raises(UserError, match="raise --text.max-bytes"):
        text_dataset(tiny, 128)


def test_the_score_is_minus_validation_cross_entropy_and_the_reward_reads_it(dataset):
    task = TextTask(dataset, CONTEXT, TextTaskConfig(eval_windows=16), CPU)
    model = small_gpt()
    want = evaluate_lm(model, dataset.search.subset(16).batches(64), CPU).cross_entropy
    assert task.score(model) == pytest.approx(-want)
    evaluation = Evaluation(top1=task.score(model), flops_ratio=0.5, metrics={})
    assert reward_cross_entropy(evaluation) == pytest.approx(-want)
    assert reward_cross_entropy(evaluation._replace(metrics={"over_budget": True})) == -10.0


def test_the_evaluator_prunes_gpt_recovers_it_with_lm_steps_and_scores_it(dataset):
    """Real torch-pruning on an explicit-attention GPT, real LM recovery: ten steps raise the
    pruned model's score, and the episode's reward is its minus cross-entropy."""
    dense = small_gpt()
    example = latency_example("prefill", CONTEXT)
    dense = pruning.explicit_attention(dense, example)
    skeleton = pruning.build_skeleton(dense, example, pruning.PruningConfig())
    task = TextTask(dataset, CONTEXT, TextTaskConfig(eval_windows=16, batch_size=8, lr=3e-3),
                    CPU)
    policy = {u.name: 0.5 for u in skeleton.units if u.kind != "block"}

    def evaluator(steps):
        return EpisodeEvaluator(dense, skeleton, example, pruning.PruningConfig(),
                                EvaluatorConfig(bn_batches=1, finetune_steps=steps), dataset,
                                CPU, score=task.score, finetune=task.recover)

    with torch.no_grad():
        before = dense(example)
    unrecovered, recovered = evaluator(0)(policy), evaluator(10)(policy)
    assert recovered.top1 > unrecovered.top1 + 0.1  # measured: -4.9 -> -3.9 nats
    assert recovered.flops_ratio < 0.75
    assert reward_cross_entropy(recovered) == recovered.top1 < 0
    with torch.no_grad():
        assert torch.equal(dense(example), before)  # pruning and recovery work on copies
    score = task.test(dense)
    assert task.test(dense) is score and 0 <= task.test_top1(dense) <= 100


def test_the_latency_workload_is_looked_up_by_name():
    assert latency_example("prefill", 16).shape == (1, 16)
    assert latency_example("prefill", 16).dtype == torch.int64
    assert "prefill" in LATENCY_WORKLOADS
    with pytest.raises(UserError, match="choose from prefill"):
        latency_example("decode-nope", 16)


def test_the_headline_gives_perplexity_beside_the_dense_model():
    line = lm_headline({"test_perplexity": 3.3, "dense_test_perplexity": 3.0,
                        "perplexity_change": 0.1, "latency_workload": "prefill"}, None)
    assert line == "test perplexity 3.300 (dense 3.000, +10.0%)"


def test_a_text_model_resolves_to_its_corpus_reward_and_prefill_batch():
    from compressor.pipeline.compress import CompressConfig, search_fields

    resolved = CompressConfig(model="gpt_tiny").resolved()
    assert (resolved.data.dataset, resolved.reward, resolved.probe.batch_size) == \
        ("stdlib", "cross-entropy", 1)
    image = CompressConfig(model="resnet18").resolved()
    assert (image.data.dataset, image.reward, image.probe.batch_size) == \
        ("fashion-mnist", "error", None)
    # Only a text search records (and on resume compares) the text sections.
    assert {"text", "lm"} <= set(search_fields(resolved))
    assert not {"text", "lm"} & set(search_fields(image))
    # The decode tables' settings only where a decode or prefill budget reads them.
    assert "decode" not in search_fields(resolved)["lm"]
    decode = replace(resolved, budget=replace(resolved.budget, decode=0.5))
    assert search_fields(decode)["lm"]["decode"] == {"past": 96, "prompt": 128}
