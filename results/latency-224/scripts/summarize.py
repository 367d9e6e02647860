"""summary.json of results/latency-224 from the benchmark's per-model outputs."""
import json, sys, statistics
from pathlib import Path

out = Path(sys.argv[1])
dense_cpu = json.loads(Path("/tmp/lm224/dense_cpu.json").read_text())


def cpu_traffic_variant(R, model):
    """The latency model with its traffic term set from the dense network's CPU time instead of
    its (load-inflated) wall time: beta = (dense CPU min - dense layer sum) / dense MB, knee 0,
    i.e. what the tool builds on a quiet machine where wall ~ CPU time. Recomputed from each row's
    layer-sum-only ratio and traffic (the model is linear in both)."""
    m = R["latency_model"]
    s_d, t_d = m["dense_layer_sum_ms"], m["dense_traffic_mb"]
    key = f"{model}@{m['batch_size']}" if f"{model}@{m['batch_size']}" in dense_cpu else model
    assert dense_cpu[key]["batch"] == m["batch_size"], (model, m["batch_size"])
    beta = max(0.0, dense_cpu[key]["cpu_min_ms"] - s_d) / t_d
    out = []
    for row in R["rows"]:
        s_p = row["variants"]["layer sum only"] * s_d
        out.append((s_p + beta * row["traffic_mb"]) / (s_d + beta * t_d))
    return beta, out


def errs(pred, rows, key="measured_cpu"):
    e = [abs(p / r[key] - 1) for p, r in zip(pred, rows)]
    sg = [p / r[key] - 1 for p, r in zip(pred, rows)]
    return {"median": statistics.median(e), "max": max(e), "mean_signed": statistics.mean(sg)}

rows, models = [], []
for model in ["resnet18", "mobilenet_v2", "resnet50"]:
    r = Path(f"/tmp/lm224/random/latency_model_{model}_224px.json")
    s = Path(f"/tmp/lm224/searched/latency_model_{model}_224px.json")
    if not r.exists():
        continue
    R = json.loads(r.read_text())
    S = json.loads(s.read_text()) if s.exists() else None
    a = R["ablations"]
    row = {
        "model": model, "input_size": R["input_size"], "num_classes": R["num_classes"],
        "policies": R["policies"],
        "median_error": R["cpu_median_error"], "max_error": R["cpu_max_error"],
        "error_against": "paired CPU-time ratio (wall-time ratio beside it)",
        "wall_median_error": R["median_error"], "wall_max_error": R["max_error"],
        "layer_sum_only_cpu_median_error": a["layer sum only vs the CPU-time ratio"]["median"],
        "layer_sum_only_cpu_max_error": a["layer sum only vs the CPU-time ratio"]["max"],
        "macs_proxy_vs_cpu": None,
        "mean_signed_error_vs_cpu": a["latency model vs the CPU-time ratio"]["mean_signed"],
        "build_seconds": R["build_seconds"], "table_seconds": R["latency_model"]["table_seconds"],
        "grid_measurements": R["latency_model"]["grid_measurements"],
        "distinct_tables": R["latency_model"]["distinct_tables"],
        "probe_batch": R["latency_model"]["batch_size"],
        "dense_min_ms_wall": R["latency_model"]["dense_min_ms"],
        "load_average_before": R["load_average_before"], "load_average_after": R["load_average_after"],
        "command": R["command"],
    }
    beta_c, pred_c = cpu_traffic_variant(R, model)
    row["cpu_traffic_term"] = {"beta_ms_per_mb": beta_c, "dense_cpu_min_ms": dense_cpu[model]["cpu_min_ms"],
                               **errs(pred_c, R["rows"])}
    row["wall_traffic_term_beta_ms_per_mb"] = R["latency_model"]["beta_ms_per_mb"]
    macs = [abs(x["macs"] / x["measured_cpu"] - 1) for x in R["rows"]]
    row["macs_proxy_vs_cpu"] = {"median": statistics.median(macs), "max": max(macs)}
    if S:
        row.update({"searched_policies": S["searched_policies"],
                    "searched_median_error": S["searched_cpu_median_error"],
                    "searched_max_error": S["searched_cpu_max_error"],
                    "searched_mean_signed_error": S["ablations_searched"]["latency model vs the CPU-time ratio"]["mean_signed"],
                    "searched_wall_median_error": S["searched_median_error"],
                    "searched_wall_max_error": S["searched_max_error"],
                    "searched_policies_from": S["policies_from"],
                    "searched_build_seconds": S["build_seconds"],
                    "searched_load_average_before": S["load_average_before"],
                    "searched_load_average_after": S["load_average_after"],
                    "searched_command": S["command"]})
        b, pc = cpu_traffic_variant(S, model)
        row["searched_cpu_traffic_term"] = errs(pc, S["rows"])
        row["searched_layer_sum_only"] = S["ablations_searched"].get("layer sum only vs the CPU-time ratio")
        row["searched_macs_proxy_vs_cpu"] = errs([x["macs"] for x in S["rows"]], S["rows"])
    for kind, first, folder in (("repeat", R, "repeat"), ("repeat_searched", S, "repeat-searched")):
        f = Path(f"/tmp/lm224/{folder}/latency_model_{model}_224px.json")
        if not f.exists() or first is None:
            continue
        X = json.loads(f.read_text())
        xr = X["rows"]
        _, pc = cpu_traffic_variant(X, model)
        agree = [b["measured_cpu"] / a["measured_cpu"] for a, b in zip(first["rows"], xr)]
        wall_agree = [b["measured"] / a["measured"] for a, b in zip(first["rows"], xr)]
        row[kind] = {
            "policies": len(xr), "load_average_before": X["load_average_before"],
            "load_average_after": X["load_average_after"], "build_seconds": X["build_seconds"],
            "probe_batch": X["latency_model"]["batch_size"],
            "wall_traffic_term_beta_ms_per_mb": X["latency_model"]["beta_ms_per_mb"],
            "as_built_vs_cpu": errs([r["predicted"] for r in xr], xr),
            "cpu_traffic_term_vs_cpu": errs(pc, xr),
            "layer_sum_only_vs_cpu": errs([r["variants"]["layer sum only"] for r in xr], xr),
            "macs_vs_cpu": errs([r["macs"] for r in xr], xr),
            "as_built_vs_wall": errs([r["predicted"] for r in xr], xr, "measured"),
            "cpu_ratio_over_first_run": [min(agree), max(agree)],
            "wall_ratio_over_first_run": [min(wall_agree), max(wall_agree)],
            "command": X["command"]}
    if "repeat" in row:  # the second pass, at lower load, is the headline; the first pass kept
        first = {k: row.pop(k) for k in list(row) if k not in ("model", "input_size", "num_classes",
                                                                "repeat", "repeat_searched")}
        x = row.pop("repeat")
        row.update({"policies": x["policies"], "median_error": x["as_built_vs_cpu"]["median"],
                    "max_error": x["as_built_vs_cpu"]["max"],
                    "error_against": "paired CPU-time ratio of the same runs (wall beside it)",
                    "mean_signed_error": x["as_built_vs_cpu"]["mean_signed"],
                    "wall_median_error": x["as_built_vs_wall"]["median"],
                    "wall_max_error": x["as_built_vs_wall"]["max"],
                    "cpu_traffic_term": x["cpu_traffic_term_vs_cpu"],
                    "layer_sum_only": x["layer_sum_only_vs_cpu"], "macs_proxy": x["macs_vs_cpu"],
                    "build_seconds": x["build_seconds"], "probe_batch": x["probe_batch"],
                    "load_average_before": x["load_average_before"],
                    "load_average_after": x["load_average_after"], "command": x["command"],
                    "cpu_ratio_over_first_pass": x["cpu_ratio_over_first_run"],
                    "wall_ratio_over_first_pass": x["wall_ratio_over_first_run"]})
        y = row.pop("repeat_searched", None)
        if y:
            row.update({"searched_policies": y["policies"],
                        "searched_median_error": y["as_built_vs_cpu"]["median"],
                        "searched_max_error": y["as_built_vs_cpu"]["max"],
                        "searched_mean_signed_error": y["as_built_vs_cpu"]["mean_signed"],
                        "searched_wall_median_error": y["as_built_vs_wall"]["median"],
                        "searched_wall_max_error": y["as_built_vs_wall"]["max"],
                        "searched_cpu_traffic_term": y["cpu_traffic_term_vs_cpu"],
                        "searched_layer_sum_only": y["layer_sum_only_vs_cpu"],
                        "searched_macs_proxy": y["macs_vs_cpu"],
                        "searched_load_average_before": y["load_average_before"],
                        "searched_load_average_after": y["load_average_after"],
                        "searched_command": y["command"],
                        "searched_policies_from": first.get("searched_policies_from")})
        row["first_pass"] = first
    rows.append(row)
    models.append({"random": R, "searched": S})
doc = {"study": "latency-224",
       "question": "At 224 px (ImageNet shape, 1000 classes), how close is the latency model's predicted ratio to the paired measured ratio of really pruned resnet18, mobilenet_v2 and resnet50, on random and on searched policies?",
       "rows": rows, "runs": models}
for model in ["resnet18", "mobilenet_v2", "resnet50"]:
    for folder, key in (("repeat", "second_pass_random"), ("repeat-searched", "second_pass_searched")):
        f = Path(f"/tmp/lm224/{folder}/latency_model_{model}_224px.json")
        if f.exists():
            doc.setdefault("second_pass_runs", {}).setdefault(model, {})[key] = json.loads(f.read_text())
def clean(o):
    """NaN (the skipped kernel-time ratio, errors over no policies) as null: strict JSON."""
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [clean(v) for v in o]
    return o


doc = clean(doc)
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n")
for r in []:
    print(r["model"], r["policies"], f"cpu {r['median_error']:.1%}/{r['max_error']:.1%}",
          f"wall {r['wall_median_error']:.1%}/{r['wall_max_error']:.1%}",
          f"sum-only {r['layer_sum_only_cpu_median_error']:.1%}/{r['layer_sum_only_cpu_max_error']:.1%}",
          f"macs {r['macs_proxy_vs_cpu']['median']:.1%}/{r['macs_proxy_vs_cpu']['max']:.1%}",
          f"signed {r['mean_signed_error_vs_cpu']:+.1%}",
          f"cputerm {r['cpu_traffic_term']['median']:.1%}/{r['cpu_traffic_term']['max']:.1%} {r['cpu_traffic_term']['mean_signed']:+.1%} b={r['cpu_traffic_term']['beta_ms_per_mb']:.3f} wallb={r['wall_traffic_term_beta_ms_per_mb']:.3f}",
          f"build {r['build_seconds']:.0f}s batch {r['probe_batch']}", r["load_average_before"], r["load_average_after"],
          (f"searched {r['searched_policies']} cpu {r['searched_median_error']:.1%}/{r['searched_max_error']:.1%} signed {r['searched_mean_signed_error']:+.1%} wall {r['searched_wall_median_error']:.1%}/{r['searched_wall_max_error']:.1%} cputerm {r['searched_cpu_traffic_term']}  sumonly {r['searched_layer_sum_only']} macs {r['searched_macs_proxy_vs_cpu']}" if "searched_policies" in r else ""))

for r in []:
    for kind in ("repeat", "repeat_searched"):
        if kind in r:
            x = r[kind]
            print(r["model"], kind, x["policies"], "load", [round(v, 1) for v in x["load_average_before"]], [round(v, 1) for v in x["load_average_after"]],
                  "built", {k: round(v, 3) for k, v in x["as_built_vs_cpu"].items()},
                  "cputerm", {k: round(v, 3) for k, v in x["cpu_traffic_term_vs_cpu"].items()},
                  "sum", {k: round(v, 3) for k, v in x["layer_sum_only_vs_cpu"].items()},
                  "macs", {k: round(v, 3) for k, v in x["macs_vs_cpu"].items()},
                  "wall", {k: round(v, 3) for k, v in x["as_built_vs_wall"].items()},
                  "agree cpu", [round(v, 3) for v in x["cpu_ratio_over_first_run"]], "wall", [round(v, 3) for v in x["wall_ratio_over_first_run"]],
                  "build", round(x["build_seconds"], 1), "batch", x["probe_batch"])

for r in rows:
    f = lambda e: f"{e['median']:.1%}/{e['max']:.1%} ({e['mean_signed']:+.1%})"
    print(r["model"], r["policies"], f"built {r['median_error']:.1%}/{r['max_error']:.1%} ({r['mean_signed_error']:+.1%})",
          "cpu-term", f(r["cpu_traffic_term"]), "sum", f(r["layer_sum_only"]), "macs", f(r["macs_proxy"]),
          f"wall {r['wall_median_error']:.1%}/{r['wall_max_error']:.1%}", "build", round(r["build_seconds"], 1), "batch", r["probe_batch"],
          [round(v, 2) for v in r["load_average_before"]], [round(v, 2) for v in r["load_average_after"]],
          "agree", [round(v, 3) for v in r["cpu_ratio_over_first_pass"]], [round(v, 3) for v in r["wall_ratio_over_first_pass"]])
    if "searched_policies" in r:
        print("   searched", r["searched_policies"], f"built {r['searched_median_error']:.1%}/{r['searched_max_error']:.1%} ({r['searched_mean_signed_error']:+.1%})",
              "cpu-term", f(r["searched_cpu_traffic_term"]), "sum", f(r["searched_layer_sum_only"]), "macs", f(r["searched_macs_proxy"]),
              f"wall {r['searched_wall_median_error']:.1%}/{r['searched_wall_max_error']:.1%}")
