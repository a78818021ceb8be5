"""`make bench`: run every benchmark, then write bench/results.md from bench/results/*.json.

Each bench/*.py script (cold_start, capacity, throughput and the feature benches: topup_calls,
redeem_calls, account_calls, metering, ...) runs as its own subprocess and writes its JSON under
bench/results/; a script that fails is reported in results.md (with the tail of its output)
and the others still run. Before them, `make build` builds the layers, whose unzipped sizes (and
what they must not ship) are measured here. results.md puts every figure next to its goal.

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
from tools import check_layer  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
REPORT = BENCH / "results.md"
BUILD = ROOT / ".aws-sam" / "build"
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


def _parts(layer: Path) -> dict[str, int]:
    """Bytes per top-level package of a built layer (a dist-info counted with its package)."""
    sizes: dict[str, int] = {}
    for entry in layer.iterdir():
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        name = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        sizes[name] = sizes.get(name, 0) + sum(f.stat().st_size for f in files)
    return sizes


def layer() -> dict[str, Any]:
    """make build, then each layer's unzipped size, what it must not ship, and the layer check."""
    built = subprocess.run(
        ["make", "build"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    result: dict[str, Any] = {"build_ok": built.returncode == 0}
    missing = [layer.logical_id for layer in check_layer.LAYERS if not layer.path(BUILD).is_dir()]
    if missing:
        result["error"] = f"no .aws-sam/build/{missing[0]}: " + "\n".join(
            (built.stdout + built.stderr).strip().splitlines()[-10:]
        )
        return result
    layers: list[dict[str, Any]] = []
    for spec in check_layer.LAYERS:
        sizes = _parts(spec.path(BUILD))
        shipped = set(check_layer.distributions(spec.path(BUILD)))
        layers.append(
            {
                "layer": spec.logical_id,
                "unzipped_mb": round(sum(sizes.values()) / 1e6, 1),
                "goal_mb": None if spec.limit_bytes is None else spec.limit_bytes / 1e6,
                "largest": {
                    k: round(v / 1e6, 1)
                    for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
                },
                "forbidden_shipped": sorted(shipped & spec.forbidden),
                "modules_without_bytecode": len(
                    check_layer.modules_without_bytecode(spec.path(BUILD))
                ),
            }
        )
    result.update(
        {
            "layers": layers,
            "lambda_limit_mb": 250,
            "total_unzipped_mb": round(sum(layer["unzipped_mb"] for layer in layers), 1),
            "check_problems": check_layer.check(BUILD),
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


def _source_rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    yield "| handler | import ms | x `import boto3` |"
    yield "|---|---|---|"
    for row in rows:
        yield f"| {row['function']} | {row['import_ms']} | {row['ratio_to_boto3']} |"


def cold_start_section(data: dict[str, Any]) -> Iterator[str]:
    yield (
        "Deployed, as Lambda runs them: each function's `sam build` artifact over its own "
        "layers (unpacked into one /opt in order), Python 3.12, read-only (no bytecode "
        "written), boto3 from a 3.12 runtime directory. Goal: each handler within 0.1x of its "
        "library floor."
    )
    yield ""
    yield "| handler | layers | import ms | floor | floor ms | x floor | x `import boto3` | goal |"
    yield "|---|---|---|---|---|---|---|---|"
    for row in data.get("handlers", []):
        if "ratio_to_floor" not in row:
            continue
        layers = " + ".join(row["layers"])
        yield (
            f"| {row['function']} | {layers} | {row['import_ms']} | {row['floor']} | "
            f"{row['floor_ms']} | {row['ratio_to_floor']} | {row['ratio_to_boto3']} | "
            f"≤ {row['goal_ratio_to_floor']}x floor{_goal_mark(row.get('meets_goal'))} |"
        )
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
            "names before a line of ours, over the core layer. No handler can import faster "
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
            f"{source.get('boto3_import_ms')} ms), for comparison:"
        )
        yield ""
        yield from _source_rows(source.get("handlers", []))


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


def _hot_account_rows(hot: dict[str, Any] | None) -> Iterator[str]:
    if not hot:
        return
    yield ""
    yield (
        f"Hot account, on paper: one account at {hot['events_per_second']} events/s, write "
        f"units a second on every partition an event touches (the account item is "
        f"{hot['account_item_bytes']} bytes with 4 grants and 3 spend limits; "
        f"usage.user_shards {hot['usage_user_shards']}). Goal: {hot['goal']}"
        f"{_goal_mark(hot.get('met'))}."
    )
    yield ""
    yield "| events | partition | partitions written | WCU/s | hottest item WCU/s | goal |"
    yield "|---|---|---|---|---|---|"
    notes: list[str] = []
    for name, scenario in hot.get("scenarios", {}).items():
        per_write = scenario.get("events_per_account_write")
        label = name if per_write is None else f"{name} ({per_write} events/account write)"
        for row in scenario.get("partitions", []):
            item = row.get("hottest_item_wcu_per_second")
            yield (
                f"| {label} | {row['partition']} | {row['partitions_written']} | "
                f"{row['wcu_per_second']} | {'-' if item is None else item} | "
                f"{row['goal']}{_goal_mark(row.get('met'))} |"
            )
            if row.get("note") and row["note"] not in notes:
                notes.append(row["note"])
    for note in notes:
        yield ""
        yield f"Over the goal: {note}"
    yield ""


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
    yield from _hot_account_rows(data.get("hot_account"))
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
    if "layers" not in data:
        yield f"Not measured: {data.get('error', 'make build failed')}"
        return
    yield "| figure | value | goal |"
    yield "|---|---|---|"
    for layer in data["layers"]:
        name, size, goal = layer["layer"], layer["unzipped_mb"], layer["goal_mb"]
        if goal is not None:
            yield (
                f"| {name} unzipped (sam build) | {size} MB | "
                f"≤ {goal:g} MB{_goal_mark(size <= goal)} |"
            )
        else:
            yield f"| {name} unzipped (sam build) | {size} MB | - |"
        forbidden = layer["forbidden_shipped"]
        what = "boto3 / botocore / their dependencies" + (
            ", stripe / requests / cryptography" if name == "CommonLayer" else ""
        )
        yield f"| {what} in {name} | {_fmt(forbidden)} | none{_goal_mark(not forbidden)} |"
        missing = layer["modules_without_bytecode"]
        yield (
            f"| modules of {name} without 3.12 bytecode (unchecked-hash pyc) | {missing} | "
            f"0 (else Lambda compiles them at every cold start){_goal_mark(missing == 0)} |"
        )
    total, limit = data["total_unzipped_mb"], data["lambda_limit_mb"]
    yield (
        f"| both layers unzipped | {total} MB | < {limit} MB (Lambda's unzipped limit)"
        f"{_goal_mark(total < limit)} |"
    )
    problems = data["check_problems"]
    yield (
        f"| tools/check_layer.py problems (shared distributions, unmet requirements, ...) | "
        f"{len(problems)} | 0{_goal_mark(not problems)} |"
    )
    yield ""
    for layer in data["layers"]:
        yield f"Largest parts of {layer['layer']} (MB): {_fmt(layer['largest'])}."
    for problem in problems:
        yield f"- {problem}"


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
    yield (f"| added for the client (with - without) | {added.get('p50')} | {added.get('p95')} | |")
    hooks = data.get("callback_hooks", {})
    for key, label in (
        ("reserve", "callback's reserve hook, before the upstream call"),
        ("settle", "callback's settle hook, after the response"),
        ("reserve_plus_settle", "callback's work per request (reserve + settle)"),
    ):
        if key in hooks:
            row = hooks[key]
            yield f"| {label} | {row.get('p50_ms')} | {row.get('p95_ms')} | {row.get('mean_ms')} |"
    yield ""
    yield (
        f"{data.get('requests')} requests each after {data.get('warmup')} warm-up ones; "
        f"{data.get('settled_requests')} of {data.get('expected_settled')} metered requests "
        f"settled, {data.get('timed_requests')} with both hooks timed inside the proxy. "
        "The reserve is on the client's path: it is the added latency (the two agree within "
        "the noise of a difference of percentiles); LiteLLM runs the "
        "settle after the response is sent, so it costs the proxy, not the client's wait. "
        f"{data.get('note', '')} ({data.get('cpus')} CPUs)."
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
    "cold_start": ("Cold start: handler import time vs its library floor", cold_start_section),
    "layer": ("Layers (sam build): core and payments", layer_section),
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
