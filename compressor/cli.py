"""Command line: `compressor <command>`. Only this module prints; the library logs and raises."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from compressor.errors import EXIT_INTERNAL, CompressorError, UserError

log = logging.getLogger("compressor")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), cifar10 or imagefolder:PATH")
    p.add_argument("--data-dir", default="data", help="where dataset files are looked for")
    p.add_argument("--input-size", type=int, default=32, help="network input side in pixels")
    p.add_argument("--search-size", type=int, default=5000,
                   help="training images held out for the search reward")
    p.add_argument("--train-size", type=int, default=None,
                   help="use only this many training images (quick runs)")
    p.add_argument("--test-size", type=int, default=None,
                   help="use only this many test images (quick runs)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18",
                   help="torchvision model name, package.module:factory or path/file.py:factory "
                        "(a function returning the nn.Module; given num_classes if it takes it)")
    p.add_argument("--models-dir", default="models", help="cache of baseline checkpoints")
    p.add_argument("--checkpoint", default=None,
                   help="use this baseline instead: one of ours, a state dict for --model, or "
                        "a whole torch.save(model) file (needs --trust-checkpoint)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow --checkpoint to be a pickled module (loading it runs its code)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1")


def _data_config(args):
    from compressor.zoo.datasets import DataConfig

    return DataConfig(dataset=args.dataset, data_dir=args.data_dir, input_size=args.input_size,
                      search_size=args.search_size, train_size=args.train_size,
                      test_size=args.test_size)


def _train_config(args):
    from compressor.training.train import TrainConfig

    config = TrainConfig(seed=args.seed)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    if getattr(args, "lr", None) is not None:
        config = replace(config, max_lr=args.lr)
    return config


def cmd_models(args) -> int:
    from compressor.zoo.models import list_classification_models

    print("\n".join(list_classification_models()))
    return 0


def cmd_pretrain(args) -> int:
    from compressor.provenance import pick_device
    from compressor.zoo import baselines as baseline
    from compressor.zoo import models
    from compressor.zoo.datasets import load_dataset

    models.check_model_name(args.model)
    data_config = _data_config(args)
    dataset = load_dataset(data_config)
    _check_compressible(args.model, dataset.num_classes, data_config.input_size)
    path = models.baseline_path(args.models_dir, args.model, dataset.name)
    if args.out:
        path = Path(args.out)
    train_config = _train_config(args)
    print(f"pretraining {args.model} on {dataset.name} ({len(dataset.train)} train images, "
          f"{data_config.input_size}px, {train_config.epochs} epochs) -> {path}")
    _, meta = baseline.pretrain(args.model, dataset, data_config, train_config, path,
                                pick_device(args.device), weights=args.weights)
    print(f"{args.model}: test top-1 {meta['test_top1']:.2f}% after {train_config.epochs} epochs "
          f"in {meta['train_seconds'] / 60:.1f} min; saved {path}")
    if meta.get("warning"):
        print(f"warning: {meta['warning']}", file=sys.stderr)
    return 0


def _check_compressible(model_name: str, num_classes: int, input_size: int) -> None:
    """A baseline is pretrained to be compressed: an untrained instance that refuses the input
    size or that torch-pruning cannot trace is refused in seconds, before the epochs are spent."""
    import torch

    from compressor.pruning.skeleton import PruningConfig, trace
    from compressor.zoo import models

    untrained = models.build_model(model_name, num_classes).eval()
    example = torch.zeros(1, 3, input_size, input_size)
    models.check_input_size(untrained, example, model_name)
    trace(untrained, example, PruningConfig())


def cmd_evaluate(args) -> int:
    from compressor.provenance import pick_device
    from compressor.zoo import baselines as baseline
    from compressor.zoo.datasets import load_dataset

    data_config = _data_config(args)
    dataset = load_dataset(data_config)
    device = pick_device(args.device)
    model, meta = baseline.load_or_pretrain(args.model, dataset, data_config, _train_config(args),
                                            args.models_dir, device, args.checkpoint,
                                            trust_checkpoint=args.trust_checkpoint)
    top1 = baseline.test_top1(model, dataset, device)
    if args.json:
        print(json.dumps({"model": args.model, "dataset": dataset.name, "test_top1": top1}))
    else:
        print(f"{args.model} on {dataset.name} test split ({len(dataset.test)} images): "
              f"top-1 {top1:.2f}%")
    return 0


def _add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads of the latency probe (default 1)")
    p.add_argument("--latency-batch-size", type=int, default=None,
                   help="probe batch size (default: smallest power of two at which the dense "
                        "model takes >= 10 ms)")
    p.add_argument("--latency-statistic", choices=("min", "median"), default="min",
                   help="what summarises a block of timed runs (default min: it repeats best "
                        "on a shared machine)")


def _probe_settings(args, input_size: int):
    from compressor.latency.probe import ProbeSettings

    settings = ProbeSettings(threads=args.threads, input_size=input_size,
                             statistic=args.latency_statistic)
    if args.latency_batch_size:
        settings = replace(settings, batch_size=args.latency_batch_size)
    return settings


def _add_quantize_args(p) -> None:
    q = p.add_argument_group("INT8 (onnxruntime static quantization of the shipped model)")
    q.add_argument("--quantize", default="none", metavar="{none,int8,mixed,searched}",
                   help="int8: quantize after the fine-tune; with compress the search sees INT8 "
                        "latency (the budget stays a ratio of dense FP32). mixed: each layer INT8 "
                        "or FP32, whichever the latency model prices faster. searched: the agent "
                        "picks each unit's precision and episodes are scored on the INT8 network")
    q.add_argument("--int8-format", default=None,
                   help="qdq-u8s8, qoperator-u8s8, qdq-s8s8 or qoperator-s8s8 (default: measure "
                        "the first three here, keep the fastest)")
    q.add_argument("--calibration", default="minmax", metavar="{minmax,entropy,percentile}",
                   help="activation range calibration (default minmax)")
    q.add_argument("--calibration-batches", type=int, default=8,
                   help="train-split batches of 32 to calibrate on (default 8)")


def _quantize_config(args):
    from compressor.quantize import QuantizeConfig

    return QuantizeConfig(mode=args.quantize, format=args.int8_format,
                          calibration=args.calibration,
                          calibration_batches=args.calibration_batches)


def _compress_config(args):
    from compressor.budgets.kinds import BudgetConfig
    from compressor.pipeline.compress import CompressConfig, FinalConfig
    from compressor.pruning import PruningConfig
    from compressor.search.agent import parse_options
    from compressor.search.distributed import DistributedConfig
    from compressor.search.evaluator import EvaluatorConfig
    from compressor.search.loop import LoopConfig, default_agent_config

    data = _data_config(args)
    return CompressConfig(
        model=args.model, seed=args.seed, device=args.device, models_dir=args.models_dir,
        checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint, out=args.out,
        policies_dir=args.policies_dir,
        results_dir=args.results_dir, method=args.method or args.agent or "ddpg",
        max_ratio=args.max_ratio, reward=args.reward, data=data,
        budget=BudgetConfig(latency=args.latency_budget, latency_ms=args.latency_ms,
                            flops=args.flops_budget, params=args.params_budget,
                            margin=args.margin, latency_source=args.latency_source,
                            probe_every=args.probe_every),
        pruning=PruningConfig(**_round_to(args.round_to), importance=args.importance,
                              ignored_layers=tuple(args.ignore)),
        # Flags left out keep EvaluatorConfig's defaults (what measured best; see README).
        evaluator=EvaluatorConfig(**{k: v for k, v in {
            "search_images": args.search_images, "bn_batches": args.bn_batches,
            "finetune_steps": args.episode_finetune_steps}.items() if v is not None}),
        loop=LoopConfig(episodes=args.episodes, checkpoint_every=args.checkpoint_every),
        agent=default_agent_config(args.episodes, args.seed, **parse_options(args.agent_option)),
        tensorboard=args.tensorboard,
        final=FinalConfig(candidates=args.candidates, candidate_steps=args.candidate_steps,
                          epochs=args.final_epochs, lr=args.final_lr, fit=not args.no_fit),
        quantize=_quantize_config(args),
        probe=_probe_settings(args, data.input_size),
        distributed=DistributedConfig(workers=args.workers, ray_address=args.ray_address,
                                      worker_threads=args.worker_threads),
    )


def _round_to(given: int | None, policy_path: str | None = None) -> dict:
    """`round_to` as given, else as the policy file recorded it, else the config's default."""
    if given is not None:
        return {"round_to": given}
    if policy_path is not None:
        try:
            recorded = json.loads(Path(policy_path).read_text()).get("round_to")
        except (OSError, ValueError, AttributeError):
            recorded = None  # read_policy reports a bad file with its own message
        if isinstance(recorded, int):
            return {"round_to": recorded}
    return {}


def cmd_compress(args) -> int:
    from compressor.errors import EXIT_BUDGET_MISSED, EXIT_OK
    from compressor.pipeline.job import compress_from_config

    if args.method and args.agent and args.method != args.agent:
        raise UserError(f"--agent {args.agent} and --method {args.method} disagree; give --method")
    config = _compress_config(args)
    outcome = compress_from_config(config, resume=args.resume,
                                   argv=["compressor", *sys.argv[1:]])
    rep = outcome.report
    precision = {"int8": " in INT8", "mixed": " in mixed INT8/FP32"}.get(
        rep["final"].get("precision"), "")
    print(f"{config.model}: test top-1 {outcome.test_top1:.2f}%{precision} (dense "
          f"{rep['baseline']['test_top1']:.2f}%), latency ratio {outcome.latency_ratio:.3f} "
          f"measured, {rep['final']['macs'] / 1e6:.1f} MMACs; {outcome.verdict}")
    warning = (rep["final"].get("int8") or {}).get("warning")
    if warning:
        print(f"warning: {warning}")
    print("wrote " + ", ".join(str(p) for p in outcome.paths.values()))
    # CI-grade: a model that measures over its budget fails the command.
    return EXIT_OK if outcome.verdict == "within budget" else EXIT_BUDGET_MISSED


def cmd_apply(args) -> int:
    from compressor.pipeline.apply import apply_policy_file
    from compressor.pruning import PruningConfig

    data = _data_config(args)
    result = apply_policy_file(
        args.model, args.policy, args.out, data, _probe_settings(args, data.input_size),
        PruningConfig(**_round_to(args.round_to, args.policy), importance=args.importance),
        finetune_epochs=args.finetune_epochs, seed=args.seed, models_dir=args.models_dir,
        checkpoint=args.checkpoint, device_name=args.device,
        quantize_config=_quantize_config(args))
    int8 = result.get("int8") or {}
    if int8.get("onnx"):
        test = int8["test"]
        print(f"INT8 ({int8['quantization']['format']}): test top-1 {test['int8_top1']:.2f}% "
              f"(FP32 {test['fp32_top1']:.2f}%), latency ratio {int8['latency']['ratio']:.3f} of "
              f"dense FP32; wrote {int8['onnx']}")
    elif int8.get("warning"):
        print(f"warning: {int8['warning']}")
    print(f"{args.model}: test top-1 {result['test_top1']:.2f}% "
          f"(dense {result['baseline_test_top1']:.2f}%), {result['macs'] / 1e6:.1f} MMACs "
          f"({result['macs'] / result['dense_macs']:.3f}), {result['params'] / 1e6:.2f} M params "
          f"({result['params'] / result['dense_params']:.3f}), measured latency ratio "
          f"{result['latency_ratio_measured']:.3f}; wrote {args.out}/model.onnx, model.pt, "
          "policy.json")
    return 0


def _settings_line(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def cmd_latency(args) -> int:
    from compressor import latency

    settings = _probe_settings(args, args.input_size)
    model = latency.make_session(args.model_onnx, settings)
    if args.reference is None:
        if settings.batch_size is None:
            settings = replace(settings, batch_size=latency.auto_batch_size(model))
        model.prepare(settings.batch_size)
        result = latency.measure_ms(model, settings)
        print(f"{args.model_onnx}: {result.ms:.3f} ms ({_settings_line(settings.as_dict())})")
        return 0
    reference = latency.make_session(args.reference, settings)
    latency.check_same_input(model, reference)
    if settings.batch_size is None:
        settings = replace(settings, batch_size=latency.auto_batch_size(reference))
    model.prepare(settings.batch_size)
    reference.prepare(settings.batch_size)
    paired = latency.measure_pair(model, reference, settings)
    lo, hi = paired.spread
    print(f"{args.model_onnx}: {paired.candidate_ms:.3f} ms, reference {paired.reference_ms:.3f} "
          f"ms, ratio {paired.ratio:.3f} (blocks {lo:.3f}-{hi:.3f}; "
          f"{_settings_line(settings.as_dict())})")
    return 0


def cmd_check(args) -> int:
    from compressor.io import atomic
    from compressor.pipeline.check import check

    test_batches, name = None, ""
    if args.dataset:
        from compressor.zoo.datasets import load_dataset

        data = _data_config(args)
        dataset = load_dataset(data)
        test_batches, name = dataset.test.batches(250), dataset.name
    report = check(args.model_onnx, args.reference, _probe_settings(args, args.input_size),
                   max_latency_ratio=args.max_latency_ratio, max_latency_ms=args.max_latency_ms,
                   max_accuracy_drop=args.max_accuracy_drop, test_batches=test_batches,
                   dataset_name=name, rounds=args.rounds)
    if args.json:
        atomic.write_json(args.json, report)
    for key, c in report["checks"].items():
        print(f"{key}: {c['value']:.3f} (limit {c['limit']}) {'ok' if c['ok'] else 'MISSED'}")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    lat = report["latency"]
    print(f"verdict: {report['verdict']} (ratio {lat['ratio']:.3f}, spread "
          f"{lat['ratio_spread'][0]:.3f}-{lat['ratio_spread'][1]:.3f}, "
          f"{_settings_line(lat['settings'])})")
    return 0 if report["verdict"] == "pass" else 1


def build_parser() -> argparse.ArgumentParser:
    from compressor.pruning.importance import IMPORTANCES

    parser = argparse.ArgumentParser(
        prog="compressor",
        description="Prune a CNN to a measured ONNX Runtime latency budget with an AMC agent.",
        epilog="Exit codes: 0 done and every budget met; 1 a budget missed (compress, check); "
               "2 bad input (one line naming the fix); 3 internal error (e.g. ONNX parity; work "
               "finished before it is kept and the message says how to finish); 130 "
               "interrupted (search state saved; --resume).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch intra-op threads (default: PyTorch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model names the registry knows")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pretrain", help="train and cache the dense baseline")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 6)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the one-cycle schedule (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="start from torchvision weights (e.g. IMAGENET1K_V1) or a checkpoint")
    p.add_argument("--out", default=None, help="checkpoint path (default models/MODEL-DATASET.pt)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="print the test top-1 of a baseline")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs if a pretrain is needed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON line")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compress", help="search a pruning policy under a budget, fine-tune, export")
    _add_model_args(p)
    _add_data_args(p)
    _add_probe_args(p)
    b = p.add_argument_group("budgets (any combination; each a ratio of the dense model)")
    b.add_argument("--latency-budget", type=float, default=None,
                   help="measured ONNX Runtime latency ratio, e.g. 0.5")
    b.add_argument("--latency-ms", type=float, default=None,
                   help="absolute latency in ms at the probe settings")
    b.add_argument("--flops-budget", type=float, default=None, help="MACs ratio")
    b.add_argument("--params-budget", type=float, default=None, help="parameter ratio")
    b.add_argument("--margin", type=float, default=0.04,
                   help="aim this fraction under a latency budget (default 0.04)")
    b.add_argument("--latency-source", choices=["model", "probe"], default="model")
    b.add_argument("--probe-every", type=int, default=10,
                   help="with the latency model, also measure every k-th episode")
    s_ = p.add_argument_group("search")
    s_.add_argument("--episodes", type=int, default=200)
    s_.add_argument("--seed", type=int, default=0)
    s_.add_argument("--method", default=None,
                    help="search method: ddpg (the AMC agent, default), random, greedy "
                         "(sensitivity), uniform, global (torch-pruning's global ranking)")
    s_.add_argument("--agent", choices=["ddpg", "random"], default=None,
                    help="the same as --method ddpg|random (kept for older commands)")
    s_.add_argument("--max-ratio", type=float, default=0.8, help="largest pruning ratio per unit")
    s_.add_argument("--reward", choices=["error", "error-log-flops"], default="error")
    s_.add_argument("--round-to", type=int, default=None,
                    help="kept channels are multiples of it (default: the CPU kernels' channel "
                         "block, 16 with AVX-512, else 8)")
    s_.add_argument("--importance", choices=sorted(IMPORTANCES), default="l2")
    s_.add_argument("--ignore", action="append", default=[],
                    help="qualified name of a layer never to prune (repeatable)")
    s_.add_argument("--search-images", type=int, default=None,
                    help="search-split images scored per episode (default: see README)")
    s_.add_argument("--bn-batches", type=int, default=None,
                    help="batches of BatchNorm recalibration per episode")
    s_.add_argument("--episode-finetune-steps", type=int, default=None,
                    help="SGD steps of fine-tune per episode after recalibration (default: see README)")
    s_.add_argument("--checkpoint-every", type=int, default=5)
    s_.add_argument("--agent-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a DDPG setting (compressor.search.agent.AgentConfig; repeatable), e.g. "
                         "warm_start=true, sensitivity=true, noise_floor=0.05, "
                         "noise_schedule=budget|decay, sensitivity_ratios=0.25,0.5,0.75")
    r = p.add_argument_group("distributed search (Ray: pip install 'compressor[distributed]')")
    r.add_argument("--workers", type=int, default=1,
                   help="Ray workers scoring episodes in parallel, one episode each per batch "
                        "(default 1: in-process, no Ray); latency is measured on this process "
                        "between batches")
    r.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: start a local one with this "
                        "machine's cores)")
    r.add_argument("--worker-threads", type=int, default=None,
                   help="torch threads per worker (default: cores // workers)")
    f = p.add_argument_group("final stage")
    f.add_argument("--candidates", type=int, default=3,
                   help="best policies given a short fine-tune")
    f.add_argument("--candidate-steps", type=int, default=100)
    f.add_argument("--final-epochs", type=int, default=1)
    f.add_argument("--final-lr", type=float, default=0.05)
    f.add_argument("--no-fit", action="store_true",
                   help="keep the searched policy exactly instead of rescaling it until it "
                        "measures within the latency budget (reproducible to the bit)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="run directory (default runs/<run name>)")
    o.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this search")
    o.add_argument("--policies-dir", default="policies")
    o.add_argument("--results-dir", default="runs")
    o.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the search's per-episode numbers as TensorBoard scalars "
                        "(pip install 'compressor[tensorboard]')")
    _add_quantize_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("apply", help="prune with a policy file, recover, evaluate, export")
    _add_model_args(p)
    _add_data_args(p)
    _add_probe_args(p)
    p.add_argument("--policy", required=True, help="policy JSON (policies/*.json)")
    _add_quantize_args(p)
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--round-to", type=int, default=None,
                   help="default: the policy file's, else the CPU kernels' channel block")
    p.add_argument("--importance", choices=sorted(IMPORTANCES), default="l2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("latency", help="measure an ONNX model, optionally against a reference")
    p.add_argument("model_onnx")
    p.add_argument("--reference", default=None, help="dense ONNX model to pair with")
    p.add_argument("--input-size", type=int, default=32)
    _add_probe_args(p)
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("check", help="CI gate: exit 1 when a latency/accuracy budget is missed")
    p.add_argument("model_onnx")
    p.add_argument("--reference", required=True, help="dense ONNX model")
    p.add_argument("--max-latency-ratio", type=float, default=None)
    p.add_argument("--max-latency-ms", type=float, default=None)
    p.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="top-1 points on the test split (needs --dataset)")
    p.add_argument("--dataset", default=None, help="dataset for the accuracy check")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--search-size", type=int, default=5000)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3,
                   help="repeated paired measurements, each on fresh sessions")
    p.add_argument("--json", default=None, help="write the machine-readable report here")
    _add_probe_args(p)
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        return args.func(args)
    except CompressorError as exc:
        if args.debug:
            raise
        kind = "error" if isinstance(exc, UserError) else "internal error"
        print(f"{kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
