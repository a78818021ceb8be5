"""`make bench`: run every benchmark, then write bench/results.md from bench/results/*.json.

Each bench/*.py script (cold_start, capacity, throughput and the feature benches: topup_calls,
redeem_calls, account_calls, metering, ...) runs as its own subprocess and writes its JSON under
bench/results/; a script that fails is reported in results.md (with the tail of its output)
and the others still run. Before them, `make build` builds the layer, whose unzipped size (and
the absence of boto3/botocore) is measured here. results.md puts every figure next to its goal.

    .venv/bin/python bench/run.py                  every script
    .venv/bin/python bench/run.py --only capacity  some (repeatable); --report only rewrites
                                                   results.md from the JSON already there
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.check_layer import modules_without_bytecode  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
REPORT = BENCH / "results.md"
LAYER = ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"
TIMEOUT = int(os.environ.get("BENCH_TIMEOUT", "1800"))
NOT_SCRIPTS = {"run.py"}
# Known scripts first, in this order; any other bench/*.py after them.
ORDER = [
    "cold_start",
    "import_profile",
    "capacity",
    "throughput",
    "topup_calls",
    "redeem_calls",
    "account_calls",
    "metering",
    "grants",
    "litellm_latency",
]


def scripts() -> list[Path]:
    found = {p.stem: p for p in BENCH.glob("*.py") if p.name not in NOT_SCRIPTS}
    return [found[name] for name in ORDER if name in found] + [
        found[name] for name in sorted(found) if name not in ORDER
    ]


def run_script(script: Path) -> dict[str, Any]:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"}
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        ok, output = done.returncode == 0, done.stdout + done.stderr
        status = "ok" if ok else f"exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        ok, status = False, f"timed out after {TIMEOUT} s"
        output = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else str(exc.stdout or "")
        )
    seconds = round(time.perf_counter() - started, 1)
    print(f"{script.name}: {status} in {seconds} s", flush=True)
    return {
        "script": script.name,
        "ok": ok,
        "status": status,
        "seconds": seconds,
        "tail": "\n".join(output.strip().splitlines()[-15:]) if not ok else "",
    }


def layer() -> dict[str, Any]:
    """make build, then the layer's unzipped size and what it must not ship."""
    built = subprocess.run(
        ["make", "build"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    result: dict[str, Any] = {"build_ok": built.returncode == 0}
    if not LAYER.is_dir():
        result["error"] = "no .aws-sam/build/CommonLayer: " + "\n".join(
            (built.stdout + built.stderr).strip().splitlines()[-10:]
        )
        return result
    sizes: dict[str, int] = {}
    for entry in LAYER.iterdir():
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        name = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        sizes[name] = sizes.get(name, 0) + sum(f.stat().st_size for f in files)
    total = sum(sizes.values())
    forbidden = sorted(
        n for n in sizes if n.split(".")[0].lower() in ("boto3", "botocore", "s3transfer")
    )
    result.update(
        {
            "unzipped_mb": round(total / 1e6, 1),
            "goal_mb": 250,
            "largest": {
                k: round(v / 1e6, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
            },
            "boto3_or_botocore": forbidden,
            "modules_without_bytecode": len(modules_without_bytecode(LAYER)),
        }
    )
    return result


# ---------------------------------------------------------------- results.md


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "none"
    return str(value)


def _goal_mark(met: Any) -> str:
    return "" if met is None else (" ✅" if met else " ❌ missed")


def _cold_start_rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    yield "| handler | import ms | x `import boto3` | goal |"
    yield "|---|---|---|---|"
    for row in rows:
        yield (
            f"| {row['function']} | {row['import_ms']} | {row['ratio_to_boto3']} | "
            f"< {row['goal_ratio']}x{_goal_mark(row.get('meets_goal'))} |"
        )


def cold_start_section(data: dict[str, Any]) -> Iterator[str]:
    yield (
        "Deployed, as Lambda runs them: each function's `sam build` artifact over the built "
        "layer, Python 3.12, read-only (no bytecode written), boto3 from a 3.12 runtime "
        "directory."
    )
    yield ""
    yield from _cold_start_rows(data.get("handlers", []))
    yield ""
    yield (
        f"Bare `import boto3`: {data.get('boto3_import_ms')} ms (median of "
        f"{data.get('runs')} fresh interpreters)."
    )
    floors = data.get("library_floors", [])
    if floors:
        yield ""
        yield (
            "Library floors: what a handler of each kind imports from the libraries DESIGN.md "
            "names before a line of ours, deployed the same way. No handler can import faster "
            "than its floor; what is ours is the difference."
        )
        yield ""
        yield "| floor | imports | import ms | x `import boto3` |"
        yield "|---|---|---|---|"
        for floor in floors:
            yield (
                f"| {floor['kind']} | {floor['imports']} | {floor['import_ms']} | "
                f"{floor['ratio_to_boto3']} |"
            )
    source = data.get("source_tree")
    if source:
        yield ""
        yield (
            f"Source tree (dev venv, cached bytecode; bare `import boto3` "
            f"{source.get('boto3_import_ms')} ms):"
        )
        yield ""
        yield from _cold_start_rows(source.get("handlers", []))


def import_profile_section(data: dict[str, Any]) -> Iterator[str]:
    rows = {"import boto3": data.get("boto3", {}), **data.get("handlers", {})}
    columns = sorted({k for row in rows.values() for k in row if k != "total"})
    yield "| import | total ms | " + " | ".join(columns) + " |"
    yield "|---|---|" + "---|" * len(columns)
    for name, row in rows.items():
        yield (
            f"| {name} | {row.get('total', '')} | "
            + " | ".join(str(row.get(c, 0)) for c in columns)
            + " |"
        )
    yield ""
    yield (
        f"Self times summed by package (median of {data.get('runs')} runs); no goal of its "
        "own: it explains the cold-start ratio above."
    )


def capacity_section(data: dict[str, Any]) -> Iterator[str]:
    yield "| operation | write units | table + index | items written | goal | condition checks |"
    yield "|---|---|---|---|---|---|"
    for name, row in data.get("operations", {}).items():
        yield (
            f"| {name} | {row['write_units']} | {row['table_write_units']} + "
            f"{row['index_write_units']} | {row['items_written']} | "
            f"{row.get('goal', '-')}{_goal_mark(row.get('met'))} | "
            f"{row['condition_checks']} |"
        )
    bound = data.get("grant_bound")
    if bound:
        labels = {
            "today": "charge, account without grants-era fields (today)",
            "at_bound": f"charge, account at the grant bound ({bound['max_grants']} + overdraft)",
            "today_with_limits": "charge with an account and a key limit, no grants",
            "at_bound_with_limits": "charge with an account and a key limit, at the grant bound",
        }
        for name, row in bound["charges"].items():
            yield (
                f"| {labels.get(name, name)} | {row['write_units']} | "
                f"{row['table_write_units']} + {row['index_write_units']} | "
                f"{row['items_written']} | account item {row['account_item_bytes']} B | "
                f"{row['condition_checks']} |"
            )
        yield (
            f"| the grant bound's cost per charge | +{bound['extra_write_units']} "
            f"(+{bound['extra_write_units_with_limits']} with limits) | | | "
            f"{bound['goal']}{_goal_mark(bound.get('met'))} | |"
        )
    yield ""
    yield f"Method: {data.get('method', '')}."
    moto = data.get("moto_reports")
    if moto:
        yield (
            f"What moto itself reports: a 3 KB PutItem → {_fmt(moto.get('put_item_3kb'))}; "
            f"TransactWriteItems → {_fmt(moto.get('transact_write_items'))} ({moto['note']})."
        )


def throughput_section(data: dict[str, Any]) -> Iterator[str]:
    goals = data.get("goals", {})
    topups, charges = data.get("topups", {}), data.get("charges", {})
    rows = [
        (
            "top-ups/second (checkout → sandbox pay → webhook → queue → credit)",
            topups.get("topups_per_second"),
            goals.get("topups_per_second"),
            f"{topups.get('topups')} orders, {topups.get('threads')} threads",
        ),
        (
            "charges/second (single events, Invoke API)",
            charges.get("charges_per_second"),
            goals.get("charges_per_second"),
            f"{charges.get('charges')} charges, {charges.get('threads')} threads",
        ),
        (
            "charged events/second in batches of 100",
            charges.get("batched_events_per_second"),
            goals.get("batched_events_per_second"),
            f"{charges.get('batched_events')} events",
        ),
    ]
    yield "| figure | value | goal (floor, this machine) | run |"
    yield "|---|---|---|---|"
    for name, value, goal, run in rows:
        met = None if value is None or goal is None else value >= goal
        yield f"| {name} | {value} | ≥ {goal}{_goal_mark(met)} | {run} |"
    yield ""
    yield f"{data.get('note', '')} ({data.get('cpus')} CPUs)."


def layer_section(data: dict[str, Any]) -> Iterator[str]:
    if "unzipped_mb" not in data:
        yield f"Not measured: {data.get('error', 'make build failed')}"
        return
    clean = not data["boto3_or_botocore"]
    yield "| figure | value | goal |"
    yield "|---|---|---|"
    fits = data["unzipped_mb"] < data["goal_mb"]
    yield (
        f"| CommonLayer unzipped (sam build) | {data['unzipped_mb']} MB | "
        f"< {data['goal_mb']} MB (Lambda's unzipped limit){_goal_mark(fits)} |"
    )
    yield (
        f"| boto3 / botocore / s3transfer in the layer | "
        f"{_fmt(data['boto3_or_botocore'])} | none{_goal_mark(clean)} |"
    )
    if "modules_without_bytecode" in data:
        missing = data["modules_without_bytecode"]
        yield (
            f"| modules without 3.12 bytecode (unchecked-hash pyc) | {missing} | "
            f"0 (else Lambda compiles them at every cold start){_goal_mark(missing == 0)} |"
        )
    yield ""
    yield f"Largest parts (MB): {_fmt(data['largest'])}."


def litellm_latency_section(data: dict[str, Any]) -> Iterator[str]:
    without, metered = data.get("without_callback", {}), data.get("with_callback", {})
    added = data.get("added_ms", {})
    yield "| proxied completion | p50 ms | p95 ms | mean ms |"
    yield "|---|---|---|---|"
    yield (
        f"| LiteLLM proxy, no callback | {without.get('p50_ms')} | {without.get('p95_ms')} | "
        f"{without.get('mean_ms')} |"
    )
    yield (
        f"| LiteLLM proxy + quota_meter callback | {metered.get('p50_ms')} | "
        f"{metered.get('p95_ms')} | {metered.get('mean_ms')} |"
    )
    yield f"| added by the callback | {added.get('p50')} | {added.get('p95')} | |"
    alone = data.get("reserve_alone")
    if alone:
        yield (
            "| for scale: one reserve Invoke from the bench process (local stack) | "
            f"{alone.get('p50_ms')} | {alone.get('p95_ms')} | {alone.get('mean_ms')} |"
        )
    yield ""
    yield (
        f"{data.get('requests')} requests each after {data.get('warmup')} warm-up ones; "
        f"{data.get('settled_requests')} of {data.get('expected_settled')} metered requests "
        f"settled. {data.get('note', '')} ({data.get('cpus')} CPUs)."
    )


def generic_section(data: Any, prefix: str = "") -> Iterator[str]:
    """Any other result file: its figures as `path: value`, goals where it states them."""
    if isinstance(data, dict):
        if "goal" in data and ("value" in data or "met" in data or "meets_goal" in data):
            met = data.get("met", data.get("meets_goal"))
            value = data.get("value", "")
            yield f"- {prefix}: {_fmt(value)} — goal {data['goal']}{_goal_mark(met)}"
            return
        for key, value in data.items():
            yield from generic_section(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            yield from generic_section(value, f"{prefix}[{index}]")
    else:
        yield f"- {prefix}: {_fmt(data)}"


SECTIONS = {
    "cold_start": ("Cold start: handler import time vs `import boto3`", cold_start_section),
    "layer": ("Common layer (sam build)", layer_section),
    "import_profile": ("Where the import time goes", import_profile_section),
    "capacity": ("Consumed write capacity per operation", capacity_section),
    "throughput": ("Local end-to-end throughput", throughput_section),
    "litellm_latency": (
        "LiteLLM proxy: latency added by the metering callback (reserve + settle)",
        litellm_latency_section,
    ),
}


def report(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (bench/run.py) from bench/results/*.json; do not edit.",
        "Local figures come from this machine's local stack (moto behind one lock, every "
        "worker on the same CPUs): compare them between runs here, not with AWS.",
        "",
    ]
    if runs:
        lines += ["| script | status | seconds |", "|---|---|---|"]
        lines += [f"| {r['script']} | {r['status']} | {r['seconds']} |" for r in runs]
        lines.append("")
        for failed in (r for r in runs if not r["ok"]):
            lines += [
                f"`{failed['script']}` failed; the end of its output:",
                "```",
                failed["tail"],
                "```",
                "",
            ]
    files = {p.stem: p for p in RESULTS.glob("*.json")}
    order: list[str] = [
        n for n in ("cold_start", "import_profile", "layer", "capacity", "throughput") if n in files
    ]
    order += sorted(n for n in files if n not in order and n != "runs")
    for name in order:
        data = json.loads(files[name].read_text())
        title, render = SECTIONS.get(name, (f"{name}", None))
        lines += [f"## {title}", f"_bench/results/{name}.json_", ""]
        lines += list(render(data) if render else generic_section(data))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks; write bench/results.md")
    parser.add_argument("--only", action="append", default=[], help="script stem (repeatable)")
    parser.add_argument("--report", action="store_true", help="only rewrite results.md")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "runs.json"
    runs: list[dict[str, Any]] = json.loads(previous.read_text()) if previous.exists() else []
    if not args.report:
        # cold_start measures the sam build artifacts: build them first.
        if not args.only or {"layer", "cold_start"} & set(args.only):
            (RESULTS / "layer.json").write_text(json.dumps(layer(), indent=2) + "\n")
        done = {
            script.name: run_script(script)
            for script in scripts()
            if not args.only or script.stem in args.only
        }
        # --only keeps the other scripts' last status; a full run replaces them all.
        kept = [run for run in runs if args.only and run["script"] not in done]
        order = {script.name: i for i, script in enumerate(scripts())}
        runs = sorted([*kept, *done.values()], key=lambda run: order.get(run["script"], 99))
        previous.write_text(json.dumps(runs, indent=2) + "\n")
    REPORT.write_text(report(runs))
    print(f"wrote {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
