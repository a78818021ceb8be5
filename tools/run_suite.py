"""Run the test suite as two pytest processes at once: tests/integration, and everything else.

Most of the suite's time is spent waiting (local stacks starting, queues and streams
draining, schedules coming due), so sessions side by side use the machine's two cores where
one leaves them idle. Each session starts its own local stack, so they share nothing
but the machine. Each one's output goes to tests/artifacts/suite-<part>.log and is printed
whole when it ends (interleaved lines would be unreadable). Any exit status but 0 fails the
run, including pytest's 5 (no tests collected).

    python tools/run_suite.py [pytest args...]      # make test
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
# Two sessions, about equally long on a 2-core machine (three only slow each other down):
# the rest of the suite also takes these integration modules (measured with --durations).
MOVED = (
    "tests/integration/test_metering_queue.py",
    "tests/integration/test_usage_insight.py",
    "tests/integration/test_migrate_grants.py",
    "tests/integration/test_usage_shards.py",
)
_OTHER_INTEGRATION = sorted(
    str(path.relative_to(ROOT))
    for path in (ROOT / "tests" / "integration").glob("test_*.py")
    if str(path.relative_to(ROOT)) not in MOVED
)
PARTS = {
    "integration": ["tests/integration", *(f"--ignore={path}" for path in MOVED)],
    "rest": ["tests", *(f"--ignore={path}" for path in _OTHER_INTEGRATION)],
}


def main(extra: list[str]) -> int:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, paths in PARTS.items():
        log = ARTIFACTS / f"suite-{name}.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "pytest", *paths, *extra]
            print(f"[suite] {name}: {' '.join(command[1:])} > {log.relative_to(ROOT)}", flush=True)
            running[name] = (
                subprocess.Popen(  # noqa: S603 - this interpreter running pytest
                    command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
                ),
                log,
            )
    failed: list[str] = []
    pending = dict(running)
    while pending:
        for name, (process, log) in list(pending.items()):
            code = process.poll()
            if code is None:
                continue
            del pending[name]
            minutes = (time.monotonic() - started) / 60
            print(f"\n[suite] ===== {name}: exit {code} after {minutes:.1f} min =====", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
            if code != 0:
                failed.append(f"{name} (exit {code})")
        time.sleep(1)
    total = (time.monotonic() - started) / 60
    if failed:
        print(f"\n[suite] FAILED after {total:.1f} min: {', '.join(failed)}", flush=True)
        return 1
    print(f"\n[suite] all parts passed in {total:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
