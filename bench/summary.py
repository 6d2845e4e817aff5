"""The table printed at the end of ``pytest --benchmark``, also written as JSON and Markdown.

One row per (op, phase, shape): the median ms of every backend, how much faster Numba is than NumPy,
what ``auto`` chose and how close it came to the better backend, and fastcnn's time over PyTorch's.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import fastcnn

# Issue 5's targets: fastcnn (auto) over PyTorch, forward + backward at batch 64.
TARGETS = {
    ("conv2d", "fwd+bwd", "1->32 3x3 s1 p0 on 64x28x28"): 1.0,
    ("conv2d", "fwd+bwd", "8->16 3x3 s1 p0 on 64x13x13"): 1.0,
    ("conv2d", "fwd+bwd", "32->64 3x3 s1 p0 on 64x26x26"): 1.25,
    ("max_pool2d", "fwd+bwd", "2x2 on (64, 32, 26, 26)"): 0.25,
    ("max_pool2d", "fwd+bwd", "2x2 on (64, 64, 24, 24)"): 0.25,
}
AUTO_CLOSE_ENOUGH = 1.10  # auto may be at most 10% slower than the better backend
_SHORT = {"conv2d": "fwd", "conv2d_grad_weight": "dW", "conv2d_grad_input": "dX", "max_pool2d": "fwd",
          "max_pool2d_backward": "bwd", "avg_pool2d": "fwd", "avg_pool2d_backward": "bwd", "conv2d_max_pool2d": "fwd",
          "conv2d_max_pool2d_grad_weight": "dW", "conv2d_max_pool2d_grad_input": "dX"}
COLUMNS = ["op", "phase", "shape", "numba ms", "numpy ms", "auto ms", "fastcnn ms", "torch ms",
           "numba speedup", "auto chose", "auto / best", "choice / best", "fastcnn / torch", "target"]


def _choice(choices: dict[str, str]) -> str:
    if len(set(choices.values())) == 1:
        return next(iter(choices.values()))
    return ", ".join(f"{_SHORT.get(op, op)} {c}" for op, c in choices.items())


def build_rows(benchmarks: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows from pytest-benchmark's results (objects with ``extra_info`` and ``stats.median`` in s)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for bench in benchmarks:
        info = bench.extra_info
        if "op" not in info or not bench.stats:
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
    return list(rows.values())


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
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"fastcnn": fastcnn.__version__, "numpy": np.__version__, "numba": _numba_version(), "torch": torch_version,
            "threads": threads, "threading_layer": fastcnn.kernels.jit.threading_layer(), "cpu": cpu}


def _numba_version():
    return fastcnn.kernels.jit.numba.__version__ if fastcnn.kernels.jit.NUMBA_AVAILABLE else None


TRAINING_COLUMNS = ["training", "numba img/s", "numpy img/s", "auto img/s", "torch img/s", "auto / torch time"]


def _training_cells(row: dict[str, Any]) -> list[str]:
    rate = {b: row["images"] / (ms / 1e3) for b, ms in row["ms"].items()}
    cells = [row["shape"]] + [f"{rate[b]:,.0f}" if b in rate else "-" for b in ("numba", "numpy", "auto", "torch")]
    return cells + [f"{row['over_torch']:.2f}x" if "over_torch" in row else "-"]


INFERENCE_COLUMNS = ["inference", "fastcnn ms", "ORT ms", "torch ms", "fastcnn / ORT", "fastcnn / torch", "target"]


def _inference_cells(row: dict[str, Any]) -> list[str]:
    from .inference import TARGETS as ORT_TARGETS

    ms = row["ms"]
    name, _, batch = row["shape"].rpartition(" at batch ")
    target = ORT_TARGETS.get((name, int(batch)))
    over = ms["fastcnn"] / ms["ort"] if "fastcnn" in ms and "ort" in ms else None
    verdict = "-" if target is None else f"<= {target:.1f}x ORT" + ("" if over is None else ": met" if over <= target else ": missed")
    return ([row["shape"]] + [f"{ms[k]:.3f}" if k in ms else "-" for k in ("fastcnn", "ort", "torch")]
            + [f"{ms['fastcnn'] / ms[k]:.2f}x" if "fastcnn" in ms and k in ms else "-" for k in ("ort", "torch")] + [verdict])


def _tables(rows: list[dict[str, Any]]) -> list[tuple[list[str], list[list[str]]]]:
    kernels = [_cells(r) for r in rows if "images" not in r and r["op"] != "predict"]
    training = [_training_cells(r) for r in rows if "images" in r]
    inference = [_inference_cells(r) for r in rows if r["op"] == "predict"]
    return [(cols, body) for cols, body in ((COLUMNS, kernels), (TRAINING_COLUMNS, training),
                                            (INFERENCE_COLUMNS, inference)) if body]


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


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [f"Median ms per call, float32, {env['threads']} threads ({env['threading_layer']}), {env['cpu']}; "
             f"numpy {env['numpy']}, numba {env['numba']}, torch {env['torch'] or 'not installed'}."
             + ("" if env["torch"] else " " + torch_note(env))]
    for cols, body in _tables(rows):
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def terminal(rows: list[dict[str, Any]]) -> str:
    out = []
    for cols, body in _tables(rows):
        table = [cols] + body
        widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
        out.append("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table))
    return "\n\n".join(out)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target and for auto's closeness: what was met and what was missed."""
    out = []
    for r in rows:
        if "target_met" in r and "over_torch" in r:
            out.append(f"{'met   ' if r['target_met'] else 'MISSED'} {r['op']} {r['phase']} {r['shape']}: "
                       f"{r['over_torch']:.2f}x PyTorch (target <= {r['target_over_torch']:.2f}x)")
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
