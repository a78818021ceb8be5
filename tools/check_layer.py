"""Check the built common layer (.aws-sam/build/CommonLayer, after `make build`): it holds the
billing package and its dependencies, never boto3/botocore/s3transfer (the Lambda runtime has
them), and fits Lambda's 250 MB unzipped limit. Exit 1 otherwise. Prints its size.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"
FORBIDDEN = ("boto3", "botocore", "s3transfer")
LIMIT_BYTES = 250 * 1024 * 1024  # Lambda: function + layers, unzipped


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    if not (LAYER / "billing" / "ledger.py").is_file():
        print(f"check_layer: {LAYER} has no billing package: run `make build`", file=sys.stderr)
        return 1
    shipped = [
        p.name for p in LAYER.iterdir() if p.name.split("-")[0].split(".")[0].lower() in FORBIDDEN
    ]
    total = size(LAYER)
    print(f"CommonLayer: {total / 1e6:.1f} MB unzipped, {sum(1 for _ in LAYER.rglob('*'))} entries")
    if shipped:
        print(
            f"check_layer: the layer ships {sorted(shipped)}; the runtime provides them",
            file=sys.stderr,
        )
        return 1
    if total > LIMIT_BYTES:
        print("check_layer: the layer is over Lambda's 250 MB unzipped limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
