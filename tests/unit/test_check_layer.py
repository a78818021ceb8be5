"""tools/check_layer.py (run by `make build`) refuses layers that would break or bloat the
functions: a provider SDK in the core layer, a distribution in both layers, an unmet
requirement, a core layer over its budget, a module of a layer or a function without its
bytecode."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from tools import check_layer


def _module(layer: Path, relative: str, bytecode: bool = True) -> None:
    source = layer / relative
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("VALUE = 1\n")
    if bytecode:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{check_layer.PYC_TAG}.pyc"
        py_compile.compile(
            str(source),
            cfile=str(pyc),
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )


def _distribution(layer: Path, name: str, version: str, *requires: str) -> None:
    info = layer / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    _module(layer, f"{name.replace('-', '_')}/__init__.py")


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """Two layers that fit: the core with billing and pydantic, payments with stripe."""
    core, payments = (tmp_path / layer / "python" for layer in ("CommonLayer", "PaymentsLayer"))
    _module(core, "billing/__init__.py")
    _module(core, "billing/ledger.py")
    _distribution(core, "typing-extensions", "4.16.0")
    _distribution(core, "pydantic", "2.14.4", "typing-extensions>=4.14.1", "jmespath")
    _distribution(payments, "stripe", "16.1.0", "typing-extensions>=4.5.0", "urllib3<3")
    _distribution(payments, "requests", "2.34.2", 'chardet; python_version < "3"')
    payments.mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_layers_that_fit_pass(build: Path) -> None:
    assert check_layer.check(build) == []


def test_a_provider_sdk_in_the_core_layer_is_refused(build: Path) -> None:
    _distribution(build / "CommonLayer" / "python", "cryptography", "50.0.2")
    assert any("CommonLayer ships ['cryptography']" in p for p in check_layer.check(build))


def test_what_the_runtime_provides_is_refused_in_either_layer(build: Path) -> None:
    _distribution(build / "PaymentsLayer" / "python", "urllib3", "2.8.0")
    assert any("PaymentsLayer ships ['urllib3']" in p for p in check_layer.check(build))


def test_a_distribution_in_both_layers_is_refused(build: Path) -> None:
    _distribution(build / "PaymentsLayer" / "python", "typing-extensions", "4.15.0")
    assert any("both layers ship ['typing-extensions']" in p for p in check_layer.check(build))


def test_an_unmet_or_wrong_version_requirement_is_refused(build: Path) -> None:
    payments = build / "PaymentsLayer" / "python"
    _distribution(payments, "cffi", "2.1.1", "pycparser")
    _distribution(payments, "certifi", "2026.1.1", "typing-extensions>=5")
    problems = check_layer.check(build)
    assert any("cffi needs pycparser, which no layer nor the runtime" in p for p in problems)
    assert any("certifi needs typing-extensions>=5, the layers ship 4.16.0" in p for p in problems)


def test_a_core_layer_over_its_budget_is_refused(build: Path) -> None:
    with (build / "CommonLayer" / "python" / "blob.bin").open("wb") as blob:
        blob.truncate(check_layer.CORE_LIMIT_BYTES + 1)
    assert any("over its 15 MB budget" in p for p in check_layer.check(build))


def test_a_module_without_bytecode_is_refused(build: Path) -> None:
    _module(build / "PaymentsLayer" / "python", "stripe/_client.py", bytecode=False)
    assert any("PaymentsLayer: 1 modules lack" in p for p in check_layer.check(build))


def test_a_function_module_without_bytecode_is_refused(build: Path) -> None:
    function = build / "AccountFunction"
    _module(function, "app.py")
    assert check_layer.check(build) == []
    _module(function, "routes_limits.py", bytecode=False)
    assert check_layer.check(build) == [
        "AccountFunction: 1 modules lack unchecked-hash cpython-312 bytecode, "
        "e.g. ['routes_limits.py']"
    ]


def test_a_build_without_the_domain_is_refused(build: Path) -> None:
    (build / "CommonLayer" / "python" / "billing" / "ledger.py").unlink()
    assert check_layer.check(build) == [
        f"{build / 'CommonLayer' / 'python'} is missing or incomplete: run `make build`"
    ]
