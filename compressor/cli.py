"""Command line: `compressor <command>`. Only this module prints; the library logs and raises."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from compressor.errors import UserError

log = logging.getLogger("compressor")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), cifar10 or imagefolder:PATH")
    p.add_argument("--data-dir", default="data", help="where dataset files are looked for")
    p.add_argument("--input-size", type=int, default=32, help="network input side in pixels")
    p.add_argument("--search-size", type=int, default=5000,
                   help="training images held out for the search reward")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="torchvision model name")
    p.add_argument("--models-dir", default="models", help="cache of baseline checkpoints")
    p.add_argument("--checkpoint", default=None, help="use this baseline checkpoint instead")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1")


def _data_config(args):
    from compressor.data import DataConfig

    return DataConfig(dataset=args.dataset, data_dir=args.data_dir, input_size=args.input_size,
                      search_size=args.search_size)


def _train_config(args):
    from compressor.train import TrainConfig

    config = TrainConfig(seed=args.seed)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    return config


def cmd_models(args) -> int:
    from compressor.models import list_classification_models

    print("\n".join(list_classification_models()))
    return 0


def cmd_pretrain(args) -> int:
    from compressor import baseline, models
    from compressor.data import load_dataset
    from compressor.provenance import pick_device

    models.check_model_name(args.model)
    data_config = _data_config(args)
    dataset = load_dataset(data_config)
    path = models.baseline_path(args.models_dir, args.model, dataset.name)
    if args.out:
        from pathlib import Path

        path = Path(args.out)
    train_config = _train_config(args)
    print(f"pretraining {args.model} on {dataset.name} ({len(dataset.train)} train images, "
          f"{data_config.input_size}px, {train_config.epochs} epochs) -> {path}")
    _, meta = baseline.pretrain(args.model, dataset, data_config, train_config, path,
                                pick_device(args.device), weights=args.weights)
    print(f"{args.model}: test top-1 {meta['test_top1']:.2f}% after {train_config.epochs} epochs "
          f"in {meta['train_seconds'] / 60:.1f} min; saved {path}")
    return 0


def cmd_evaluate(args) -> int:
    from compressor import baseline
    from compressor.data import load_dataset
    from compressor.provenance import pick_device

    data_config = _data_config(args)
    dataset = load_dataset(data_config)
    device = pick_device(args.device)
    model, meta = baseline.load_or_pretrain(args.model, dataset, data_config, _train_config(args),
                                            args.models_dir, device, args.checkpoint)
    top1 = baseline.test_top1(model, dataset, device)
    if args.json:
        print(json.dumps({"model": args.model, "dataset": dataset.name, "test_top1": top1}))
    else:
        print(f"{args.model} on {dataset.name} test split ({len(dataset.test)} images): "
              f"top-1 {top1:.2f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressor",
        description="Prune a CNN to a measured ONNX Runtime latency budget with an AMC agent.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model names the registry knows")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pretrain", help="train and cache the dense baseline")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 6)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.debug:
            raise
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
