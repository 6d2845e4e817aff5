"""The table printed at the end of ``pytest --benchmark``, also written as JSON and Markdown.

One row per (op, phase, shape): the median ms of every backend, how much faster Numba is than NumPy,
what ``auto`` chose and how close it came to the better backend, and fastcnn's time over PyTorch's.
The model zoo (``bench/zoo.py``) has its own table, one row per (network, phase), which
``python -m bench.zoo`` prints too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import fastcnn
from fastcnn.tables import format_table

# Issue 17's targets for the MNIST kernels: fastcnn (auto) over PyTorch at its best, forward + backward at batch 64.
TARGETS = {
    ("conv2d", "fwd+bwd", "1->32 3x3 s1 p0 on 64x28x28"): 0.9,
    ("conv2d", "fwd+bwd", "8->16 3x3 s1 p0 on 64x13x13"): 0.9,
    ("conv2d", "fwd+bwd", "32->64 3x3 s1 p0 on 64x26x26"): 0.9,
    ("max_pool2d", "fwd+bwd", "2x2 on (64, 32, 26, 26)"): 0.25,
    ("max_pool2d", "fwd+bwd", "2x2 on (64, 64, 24, 24)"): 0.25,
}


def ort_target(model: str, batch: int) -> float | None:
    """Issue 18's target for fastcnn's inference time over ONNX Runtime's: LeNet at batch 1 and 256,
    and every zoo network (every model that is not a preset) at batch 256; None where there is none."""
    if model == "lenet":
        return {1: 1.0, 256: 0.6}.get(batch)
    return 1.0 if batch == 256 and model not in fastcnn.models.PRESETS else None


# Issue 17's targets for every zoo network: fastcnn (auto) over PyTorch, per phase kind.
ZOO_TARGETS = {"train": 0.8, "infer": 1.0}
AUTO_CLOSE_ENOUGH = 1.10  # auto may be at most 10% slower than the better backend
_SHORT = {"conv2d": "fwd", "conv2d_grad_weight": "dW", "conv2d_grad_input": "dX", "max_pool2d": "fwd",
          "max_pool2d_backward": "bwd", "avg_pool2d": "fwd", "avg_pool2d_backward": "bwd", "conv2d_max_pool2d": "fwd",
          "conv2d_max_pool2d_grad_weight": "dW", "conv2d_max_pool2d_grad_input": "dX", "conv2d_relu": "fwd",
          "conv2d_relu_grad_weight": "dW", "conv2d_relu_grad_input": "dX"}
COLUMNS = ["op", "phase", "shape", "numba ms", "numpy ms", "auto ms", "fastcnn ms", "torch ms",
           "numba speedup", "auto chose", "auto / best", "choice / best", "fastcnn / torch", "target"]


def _choice(choices: dict[str, str]) -> str:
    if len(set(choices.values())) == 1:
        return next(iter(choices.values()))
    return ", ".join(f"{_SHORT.get(op, op)} {c}" for op, c in choices.items())


def build_rows(benchmarks: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows from pytest-benchmark's results (objects with ``extra_info`` and ``stats.median`` in s)."""
    benchmarks = list(benchmarks)
    rows: dict[tuple, dict[str, Any]] = {}
    for bench in benchmarks:
        info = bench.extra_info
        if "op" not in info or not bench.stats or info["op"] == "zoo":
            continue
        key = (info["op"], info["phase"], info["shape"])
        row = rows.setdefault(key, {"op": key[0], "phase": key[1], "shape": key[2], "ms": {}})
        row["ms"][info["backend"]] = bench.stats.median * 1e3
        if "images" in info:
            row["images"] = info["images"]
        if "auto_choice" in info:
            row["auto_choice"], row["auto_measure_ms"] = info["auto_choice"], info["auto_measure_ms"]
    for key, row in rows.items():
        ms = row["ms"]
        if "numba" in ms and "numpy" in ms:
            row["numba_speedup"] = ms["numpy"] / ms["numba"]
        best = min((ms[b] for b in ("numba", "numpy") if b in ms), default=None)
        if "auto" in ms and best and "images" not in row:  # whole training runs mix ops: no single choice
            row["auto_over_best"] = ms["auto"] / best
            # One backend chosen for every op: judge the choice by that backend's own benchmark, which
            # was timed moments apart from auto's; on a noisy machine the two can differ by more than
            # the backends do.
            chosen = set(row.get("auto_choice", {}).values())
            if len(chosen) == 1 and next(iter(chosen)) in ms:
                row["choice_over_best"] = ms[next(iter(chosen))] / best
            else:
                row["choice_over_best"] = row["auto_over_best"]
        ours = ms.get("auto", ms.get("fastcnn"))
        if ours and "torch" in ms:
            row["over_torch"] = ours / ms["torch"]
        if key in TARGETS:
            row["target_over_torch"] = TARGETS[key]
            row["target_met"] = row.get("over_torch", np.inf) <= TARGETS[key]
    return list(rows.values()) + zoo_rows_from_benchmarks(benchmarks)


def _cells(row: dict[str, Any]) -> list[str]:
    ms = row["ms"]

    def t(name):
        return f"{ms[name]:.3f}" if name in ms else "-"

    def ratio(key, suffix="x"):
        return f"{row[key]:.2f}{suffix}" if key in row else "-"

    target = "-"
    if "target_over_torch" in row:
        verdict = "met" if row["target_met"] else "missed"
        target = f"<= {row['target_over_torch']:.2f}x: {verdict}" if "over_torch" in row else f"<= {row['target_over_torch']:.2f}x"
    chose = _choice(row["auto_choice"]) if "auto_choice" in row else "-"
    if "auto_measure_ms" in row:
        chose += f" (measured in {row['auto_measure_ms']:.0f} ms)"
    return [row["op"], row["phase"], row["shape"], t("numba"), t("numpy"), t("auto"), t("fastcnn"), t("torch"),
            ratio("numba_speedup"), chose, ratio("auto_over_best"), ratio("choice_over_best"), ratio("over_torch"), target]


def environment(threads: int) -> dict[str, Any]:
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"fastcnn": fastcnn.__version__, "numpy": np.__version__, "numba": _numba_version(), "torch": torch_version,
            "threads": threads, "threading_layer": fastcnn.kernels.jit.threading_layer(),
            "cpu": fastcnn.kernels.jit.cpu_description()}


def _numba_version():
    return fastcnn.kernels.jit.numba.__version__ if fastcnn.kernels.jit.NUMBA_AVAILABLE else None


TRAINING_COLUMNS = ["training", "numba img/s", "numpy img/s", "auto img/s", "torch img/s", "auto / torch time"]


def _training_cells(row: dict[str, Any]) -> list[str]:
    rate = {b: row["images"] / (ms / 1e3) for b, ms in row["ms"].items()}
    cells = [row["shape"]] + [f"{rate[b]:,.0f}" if b in rate else "-" for b in ("numba", "numpy", "auto", "torch")]
    return cells + [f"{row['over_torch']:.2f}x" if "over_torch" in row else "-"]


INFERENCE_COLUMNS = ["inference", "fastcnn ms", "ORT ms", "torch ms", "fastcnn / ORT", "fastcnn / torch", "target"]


def _inference_cells(row: dict[str, Any]) -> list[str]:
    ms = row["ms"]
    name, _, batch = row["shape"].rpartition(" at batch ")
    target = ort_target(name, int(batch))
    over = ms["fastcnn"] / ms["ort"] if "fastcnn" in ms and "ort" in ms else None
    verdict = "-" if target is None else f"<= {target:.1f}x ORT" + ("" if over is None else ": met" if over <= target else ": missed")
    return ([row["shape"]] + [f"{ms[k]:.3f}" if k in ms else "-" for k in ("fastcnn", "ort", "torch")]
            + [f"{ms['fastcnn'] / ms[k]:.2f}x" if "fastcnn" in ms and k in ms else "-" for k in ("ort", "torch")] + [verdict])


def torch_note(env: dict[str, Any]) -> str:
    """Why the PyTorch columns are empty, when they are."""
    if env["torch"]:
        return f"PyTorch {env['torch']} measured in the same run."
    return ("PyTorch is not installed, so the torch columns and the ratios to PyTorch are \"-\" "
            "(pip install torch to compare; its CPU wheel is enough).")


def header(env: dict[str, Any], max_time: float) -> str:
    """What the numbers are: threads, CPU, versions, the time each benchmark ran, and PyTorch's presence."""
    return (f"median of rounds within max_time={max_time:g} s per benchmark, float32, {env['threads']} threads "
            f"({env['threading_layer']}), {env['cpu']}; numpy {env['numpy']}, numba {env['numba']}. "
            + torch_note(env))


# ------------------------------------------------------------------------------------------- the zoo
ZOO_COLUMNS = ["net", "phase", "numba ms", "numpy ms", "auto ms", "torch ms", "numba / numpy", "auto chose",
               "auto / best", "auto / torch", "target", "spread"]


def zoo_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the zoo table from measurements: dicts with ``name``, ``phase``, ``kind`` (train or
    infer), ``backend``, ``seconds`` (median), optionally ``spread`` ((max - min) / median of its
    samples; the row shows its noisiest backend's) and, for ``auto``, ``choice`` (backend -> decisions)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault((r["name"], r["phase"]), {"net": r["name"], "phase": r["phase"], "kind": r["kind"],
                                                        "ms": {}, "zoo": True})
        row["ms"][r["backend"]] = r["seconds"] * 1e3
        if r.get("spread") is not None:
            row["spread"] = max(row.get("spread", 0.0), r["spread"])
        if r.get("choice") is not None:
            row["auto_counts"] = r["choice"]
    for row in rows.values():
        ms = row["ms"]
        if "numba" in ms and "numpy" in ms:
            row["numba_over_numpy"] = ms["numba"] / ms["numpy"]
        best = min((ms[b] for b in ("numba", "numpy") if b in ms), default=None)
        if "auto" in ms and best:
            row["auto_over_best"] = ms["auto"] / best
        if "auto" in ms and "torch" in ms:
            row["over_torch"] = ms["auto"] / ms["torch"]
        row["target_over_torch"] = ZOO_TARGETS[row["kind"]]
        if "over_torch" in row:
            row["target_met"] = row["over_torch"] <= row["target_over_torch"]
    return list(rows.values())


def zoo_rows_from_benchmarks(benchmarks: Iterable[Any]) -> list[dict[str, Any]]:
    """:func:`zoo_rows` from pytest-benchmark's results (``bench/bench_zoo.py``)."""
    return zoo_rows(dict(name=b.extra_info["shape"], phase=b.extra_info["phase"], kind=b.extra_info["kind"],
                         backend=b.extra_info["backend"], seconds=b.stats.median, choice=b.extra_info.get("auto_counts"))
                    for b in benchmarks if b.extra_info.get("op") == "zoo" and b.stats)


def _zoo_cells(row: dict[str, Any]) -> list[str]:
    ms = row["ms"]

    def ratio(key):
        return f"{row[key]:.2f}x" if key in row else "-"

    chose = ", ".join(f"{b} {n}" for b, n in sorted(row.get("auto_counts", {}).items())) or "-"
    target = f"<= {row['target_over_torch']:.2f}x"
    if "target_met" in row:
        target += ": met" if row["target_met"] else ": MISSED"
    return [row["net"], row["phase"]] + [f"{ms[b]:.3f}" if b in ms else "-" for b in ("numba", "numpy", "auto", "torch")] + [
        ratio("numba_over_numpy"), chose, ratio("auto_over_best"), ratio("over_torch"), target,
        f"{row['spread']:.0%}" if "spread" in row else "-"]


def zoo_table(rows: list[dict[str, Any]]) -> str:
    """The zoo's rows as an aligned text table."""
    return format_table([ZOO_COLUMNS] + [_zoo_cells(r) for r in rows])


def zoo_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Targets met and missed over the zoo's rows: PyTorch ratios, auto's closeness, Numba vs NumPy."""
    judged = [r for r in rows if "target_met" in r]
    out = [f"zoo: target met on {sum(r['target_met'] for r in judged)} of {len(judged)} rows "
           f"(training step <= {ZOO_TARGETS['train']:.2f}x PyTorch, inference <= {ZOO_TARGETS['infer']:.2f}x)"]
    close = [r for r in rows if "auto_over_best" in r]
    out.append(f"zoo: auto within {AUTO_CLOSE_ENOUGH - 1:.0%} of the better backend on "
               f"{sum(r['auto_over_best'] <= AUTO_CLOSE_ENOUGH for r in close)} of {len(close)} rows")
    slow = [r for r in rows if r.get("numba_over_numpy", 0) > 1.5]
    out += [f"zoo: numba {r['numba_over_numpy']:.2f}x numpy's time on {r['net']} {r['phase']}" for r in slow]
    return out


def _tables(rows: list[dict[str, Any]]) -> list[tuple[list[str], list[list[str]]]]:
    kernels = [_cells(r) for r in rows if "images" not in r and "zoo" not in r and r["op"] != "predict"]
    training = [_training_cells(r) for r in rows if "images" in r]
    inference = [_inference_cells(r) for r in rows if "zoo" not in r and r["op"] == "predict"]
    zoo = [_zoo_cells(r) for r in rows if "zoo" in r]
    return [(cols, body) for cols, body in ((COLUMNS, kernels), (TRAINING_COLUMNS, training),
                                            (INFERENCE_COLUMNS, inference), (ZOO_COLUMNS, zoo)) if body]


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [f"Median ms per call, float32, {env['threads']} threads ({env['threading_layer']}), {env['cpu']}; "
             f"numpy {env['numpy']}, numba {env['numba']}, torch {env['torch'] or 'not installed'}."
             + ("" if env["torch"] else " " + torch_note(env))]
    for cols, body in _tables(rows):
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def terminal(rows: list[dict[str, Any]]) -> str:
    return "\n\n".join(format_table([cols] + body) for cols, body in _tables(rows))


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target and for auto's closeness: what was met and what was missed."""
    out = []
    for r in rows:
        if "target_met" in r and "over_torch" in r and "zoo" not in r:
            out.append(f"{'met   ' if r['target_met'] else 'MISSED'} {r['op']} {r['phase']} {r['shape']}: "
                       f"{r['over_torch']:.2f}x PyTorch (target <= {r['target_over_torch']:.2f}x)")
    zoo = [r for r in rows if "zoo" in r]
    if zoo:
        out += zoo_verdicts(zoo)
    judged = [r for r in rows if "choice_over_best" in r]
    wrong = [r for r in judged if r["choice_over_best"] > AUTO_CLOSE_ENOUGH]
    out.append(f"auto's choice within {AUTO_CLOSE_ENOUGH - 1:.0%} of the better backend on {len(judged) - len(wrong)} "
               f"of {len(judged)} rows")
    out += [f"MISSED auto's choice {r['choice_over_best']:.2f}x best: {r['op']} {r['phase']} {r['shape']}" for r in wrong]
    noisy = [r for r in judged if r["auto_over_best"] > AUTO_CLOSE_ENOUGH and r not in wrong]
    if noisy:
        out.append(f"rows where auto's own timing was over {AUTO_CLOSE_ENOUGH - 1:.0%} slower although it chose the "
                   f"faster backend (machine noise between the two benchmarks): {len(noisy)}")
    return out


def write(rows: list[dict[str, Any]], env: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "summary.json", directory / "summary.md"
    json_path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1, default=bool))
    md_path.write_text(markdown(rows, env) + "\n" + "\n".join(f"- {v}" for v in verdicts(rows)) + "\n")
    return json_path, md_path
