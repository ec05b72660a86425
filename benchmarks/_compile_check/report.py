"""Records of one compile check and their files: ``compile_<target>.json`` and a Markdown table beside it."""
from __future__ import annotations

import json
import os
from typing import Any

# Every record has these keys (null where a target has no value for one).
# bytes_accessed: this pallas_call's operands and results (its CostEstimate); op_bytes_accessed: the whole compiled
# direction (TPU: XLA's cost analysis, kernels and glue; sm_90: the sum of its kernels, glue not counted);
# ideal_bytes: every big array of the direction once (Case.ideal_bytes); xla_bytes_accessed: XLA's own fusion of
# the same op compiled for the same target (TPU only); layout_copies: instructions outside the kernels that rewrite
# a whole (rows, width) array, i.e. layout transposes/copies (TPU only; listed in message).
FIELDS = ("kernel", "pass", "rows", "width", "dtype", "block", "num_warps", "status", "registers", "spill_bytes",
          "smem_bytes", "occupancy_warps", "vmem_bytes", "vmem_pct", "hbm_bytes", "bytes_accessed",
          "op_bytes_accessed", "ideal_bytes", "xla_bytes_accessed", "layout_copies", "message")


def record(**kw: Any) -> dict:
    unknown = set(kw) - set(FIELDS)
    if unknown:
        raise KeyError(f"unknown record fields {sorted(unknown)}")
    return {k: kw.get(k) for k in FIELDS}


def summary(records: list[dict]) -> dict:
    """Figures over the whole sweep: counts by status, worst spills/registers/VMEM, bytes_accessed / ideal."""
    ok = [r for r in records if r["status"] == "ok"]

    def mx(key):
        vals = [r[key] for r in ok if r[key] is not None]
        return max(vals) if vals else None

    def mn(key):
        vals = [r[key] for r in ok if r[key] is not None]
        return min(vals) if vals else None

    ops = {(r["kernel"], r["rows"], r["width"], r["dtype"], r["pass"][:3]): r for r in ok if r["op_bytes_accessed"]}
    ratios = [r["op_bytes_accessed"] / r["ideal_bytes"] for r in ops.values() if r["ideal_bytes"]]
    xla = [r["op_bytes_accessed"] / r["xla_bytes_accessed"] for r in ops.values() if r["xla_bytes_accessed"]]
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {"kernels": len(records), "by_status": by_status, "max_spill_bytes": mx("spill_bytes"),
            "max_registers": mx("registers"), "min_occupancy_warps": mn("occupancy_warps"),
            "max_vmem_pct": mx("vmem_pct"),
            "bytes_accessed_over_ideal": [min(ratios), max(ratios)] if ratios else None,
            "bytes_accessed_over_xla": [min(xla), max(xla)] if xla else None}


def write(records: list[dict], target: str, out_dir: str, meta: dict) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    js = os.path.join(out_dir, f"compile_{target}.json")
    md = os.path.join(out_dir, f"compile_{target}.md")
    with open(js, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    s = summary(records)
    cols = [c for c in FIELDS if c != "message" and any(r[c] is not None for r in records)] + ["message"]
    lines = [f"# Compile check: {target}", "", "".join(f"* {k}: {v}\n" for k, v in {**meta, **s}.items()), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return js, md


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace("|", "/").replace("\n", " ")[:160]
