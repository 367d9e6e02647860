"""Dense CPU time (min over runs of the calling thread's CPU time) at 224 px, 1000 classes, 1 thread."""
import json, sys, time
import torch
from compressor import latency
from compressor.io.export import onnx_bytes
from compressor.zoo.models import build_model
torch.set_num_threads(1)
out = {}
for name, batch in [("resnet18", 1), ("mobilenet_v2", int(sys.argv[1])), ("resnet50", 1)]:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    s = latency.make_session(onnx_bytes(build_model(name, 1000).eval(), x),
                             latency.ProbeSettings(batch_size=batch, input_size=224))
    for _ in range(10):
        s.run_once()
    cpu, wall = [], []
    for _ in range(60):
        w0, c0 = time.perf_counter(), time.thread_time()
        s.inner.run(None, s.feed)
        cpu.append((time.thread_time() - c0) * 1e3); wall.append((time.perf_counter() - w0) * 1e3)
    out[name] = {"batch": batch, "cpu_min_ms": min(cpu), "cpu_median_ms": sorted(cpu)[30],
                 "wall_min_ms": min(wall), "wall_median_ms": sorted(wall)[30]}
    print(name, out[name], flush=True)
json.dump(out, open("/tmp/lm224/dense_cpu.json", "w"), indent=1)
