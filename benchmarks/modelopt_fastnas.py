"""Benchmark: what NVIDIA ModelOpt's FastNAS pruning can reach on a model, by our probe.

ModelOpt is a peer tool (issues 33 and 34). This asks the question before accuracy: which part of
the network its search space covers, and the measured latency of the smallest network it can
return. `mtp.prune(mode="fastnas")` with a FLOPs constraint, a score of 0 (every subnet ties, so
the search returns one that meets the constraint), then both networks exported by `export_onnx`
and timed as `compressor check` times a pair (3 rounds on fresh sessions, pooled, one thread).

ModelOpt is not a dependency: `nvidia-modelopt` 0.47 needs `torchprofile==0.0.4`. Installed
beside the project's environment without touching it:

    .venv/bin/pip install --target /tmp/modelopt --no-deps nvidia-modelopt torchprofile==0.0.4 \\
        omegaconf pydantic pydantic-core typing-inspection annotated-types pulp rich \\
        markdown-it-py mdurl pygments scipy regex
    PYTHONPATH=/tmp/modelopt OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.modelopt_fastnas \\
        --model vit_tiny --flops 63%

A ViT is given in compressor's explicit attention form (`pruning.explicit_attention`, equal
outputs): on torchvision's `nn.MultiheadAttention` ModelOpt's FLOPs profiler fails inside
torchprofile's trace and it reports the attention's `out_proj` as an unvisited module.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from compressor import latency, pruning
from compressor.io.export import export_onnx
from compressor.provenance import cpu_name
from compressor.zoo import models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--flops", default="63%", help="FastNAS's upper bound, e.g. 50%%")
    p.add_argument("--input-size", type=int, default=32)
    args = p.parse_args(argv)
    import modelopt.torch.prune as mtp  # the optional peer: imported only here

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.input_size, args.input_size)

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        model = models.build_model(args.model, num_classes=10).eval()
        return pruning.explicit_attention(model, x) if pruning.has_attention(model) else model

    dense, candidate = build(), build()
    loader = [(torch.randn(8, *x.shape[1:]), torch.zeros(8, dtype=torch.long))]
    with tempfile.TemporaryDirectory() as tmp:
        pruned, _ = mtp.prune(candidate, mode="fastnas", constraints={"flops": args.flops},
                              dummy_input=x,
                              config={"data_loader": loader, "score_func": lambda m: 0.0,
                                      "checkpoint": f"{tmp}/search.pth",
                                      "max_iter_data_loader": 1})
        batch = torch.randn(8, *x.shape[1:])
        export_onnx(dense, batch, Path(tmp) / "dense.onnx")
        export_onnx(pruned.eval(), batch, Path(tmp) / "pruned.onnx")
        settings = latency.ProbeSettings(input_size=args.input_size)
        settings = latency.resolve_batch_size(
            settings, latency.make_session(Path(tmp) / "dense.onnx", settings))
        paired = latency.pool_rounds(latency.fresh_rounds(
            Path(tmp) / "pruned.onnx", Path(tmp) / "dense.onnx", settings, 3))
    widths = {name: module.out_features for name, module in pruned.named_modules()
              if isinstance(module, torch.nn.Linear)}
    params = [sum(t.numel() for t in m.parameters()) for m in (pruned, dense)]
    print(json.dumps({"tool": "modelopt-fastnas", "model": args.model, "flops": args.flops,
                      "latency_ratio": paired.ratio, "latency_spread": list(paired.spread),
                      "params_ratio": params[0] / params[1], "linear_widths": widths,
                      "machine": cpu_name()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
