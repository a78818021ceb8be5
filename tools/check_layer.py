"""Check the built common layer (.aws-sam/build/CommonLayer, after `make build`): it holds the
billing package and its dependencies, never boto3/botocore/s3transfer (the Lambda runtime has
them), fits Lambda's 250 MB unzipped limit, and ships 3.12 bytecode for every module (hash-based,
unchecked: /opt is read-only, so Lambda could neither write nor refresh a pyc). Exit 1
otherwise. Prints its size.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"
FORBIDDEN = ("boto3", "botocore", "s3transfer")
LIMIT_BYTES = 250 * 1024 * 1024  # Lambda: function + layers, unzipped
PYC_TAG = "cpython-312"
UNCHECKED_HASH_FLAGS = 0b01  # PEP 552: hash-based, check_source bit clear


def modules_without_bytecode(layer: Path) -> list[str]:
    """Source modules that have no unchecked-hash 3.12 pyc next to them."""
    missing = []
    for source in layer.rglob("*.py"):
        pyc = source.parent / "__pycache__" / f"{source.stem}.{PYC_TAG}.pyc"
        header = pyc.read_bytes()[:8] if pyc.is_file() else b""
        if len(header) < 8 or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH_FLAGS:
            missing.append(str(source.relative_to(layer)))
    return sorted(missing)


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
    missing = modules_without_bytecode(LAYER)
    if missing:
        print(
            f"check_layer: {len(missing)} modules lack unchecked-hash {PYC_TAG} bytecode, "
            f"e.g. {missing[:3]}",
            file=sys.stderr,
        )
        return 1
    if total > LIMIT_BYTES:
        print("check_layer: the layer is over Lambda's 250 MB unzipped limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
