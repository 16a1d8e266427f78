"""The package's layout rules (DESIGN §1), checked on the source itself.

- Data flows one way: nothing under `data/` or `training/` imports `report/`; `decode` does not
  import `sources` (decoding knows files, not layouts).
- A name that crosses a package boundary is public: no `_name` is imported (or read as
  `module._name`) from a module of another package. Inside one package (one folder),
  private helpers may be shared.
- Each check module of `doctor/checks/` is one DESIGN §4 area, and every check declares the
  probes it reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clipdoctor"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    """The package (folder) a module lives in; a package's `__init__` is its own package."""
    if MODULES.get(module, Path()).name == "__init__.py":
        return module
    return module.rsplit(".", 1)[0]


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from X import ...` (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return f"{base}.{node.module}" if node.module else base


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every clipdoctor import in `module`,
    plus `alias._name` reads of an imported clipdoctor module (name = the attribute)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out: list[tuple[str, str | None, int]] = []
    aliases: dict[str, str] = {}  # local name -> clipdoctor module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if not source.startswith("clipdoctor"):
                continue
            for a in node.names:
                full = f"{source}.{a.name}"
                if full in MODULES:  # `from pkg import submodule`
                    out.append((full, None, node.lineno))
                    aliases[a.asname or a.name] = full
                else:
                    out.append((source, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("clipdoctor"):
                    out.append((a.name, None, node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr)):
            out.append((aliases[node.value.id], node.attr, node.lineno))
    return out


def test_the_scan_sees_the_package():
    assert "clipdoctor.data.decode" in MODULES and "clipdoctor.cli" in MODULES
    assert len(MODULES) > 40


def test_data_and_train_never_import_report():
    bad = [f"{m}:{line} imports {src}" for m in MODULES
           if m.startswith(("clipdoctor.data", "clipdoctor.training"))
           for src, _, line in _imports(m) if src.startswith("clipdoctor.report")]
    assert not bad, "data/ and training/ must not import report/ (pass a callback):\n" + "\n".join(bad)


def test_decode_knows_files_not_layouts():
    bad = [f"line {line}: {src}" for src, _, line in _imports("clipdoctor.data.decode")
           if src.startswith(("clipdoctor.data.sources", "clipdoctor.data.layouts"))]
    assert not bad, "clipdoctor.data.decode imports from sources/layouts:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_package():
    bad = []
    for m in MODULES:
        for src, name, line in _imports(m):
            if name is not None and _private(name) and _package_of(src) != _package_of(m):
                bad.append(f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} uses {src}.{name}")
    assert not bad, ("private names used from another package (make them public, or move "
                     "them):\n" + "\n".join(sorted(bad)))


def test_the_scan_catches_a_private_import(tmp_path, monkeypatch):
    """The rule above is not vacuous: a planted cross-package private import is found."""
    fake = tmp_path / "clipdoctor" / "training" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from clipdoctor.data.decode import _secret\nfrom . import y\n"
                    "from clipdoctor.data import decode\nv = decode._hidden\n")
    monkeypatch.setitem(MODULES, "clipdoctor.training.x", fake)
    found = {(src, name) for src, name, _ in _imports("clipdoctor.training.x")}
    assert ("clipdoctor.data.decode", "_secret") in found
    assert ("clipdoctor.data.decode", "_hidden") in found
    assert _package_of("clipdoctor.training.x") != _package_of("clipdoctor.data.decode")


def test_check_modules_are_the_design_areas():
    from clipdoctor.doctor.findings import CODES
    from clipdoctor.doctor.registry import CHECKS
    from clipdoctor.doctor.runner import load_checks

    load_checks()
    areas = {area for area, *_ in CODES.values()}
    files = {p.stem for p in (PACKAGE / "doctor" / "checks").glob("*.py")
             if p.stem not in ("__init__", "common")}
    assert files == areas, f"check modules {sorted(files)} != DESIGN §4 areas {sorted(areas)}"
    for c in CHECKS.values():
        module = c.fn.__module__.rsplit(".", 1)[-1]
        for code in c.codes:
            assert CODES[code][0] == module, f"{c.name} emits {code} ({CODES[code][0]}) " \
                                             f"but lives in checks/{module}.py"


def test_every_check_declares_known_probes():
    from clipdoctor.doctor.probes import PROBES
    from clipdoctor.doctor.registry import CHECKS
    from clipdoctor.doctor.runner import load_checks

    load_checks()
    assert CHECKS
    for c in CHECKS.values():
        assert c.requires, f"check {c.name} declares no probes"
        unknown = [p for p in c.requires if p not in PROBES]
        assert not unknown, f"check {c.name} requires unknown probes {unknown}"


def test_registry_imports_no_check_module():
    """The registry holds the decorator and the table; the runner imports the checks."""
    srcs = {src for src, _, _ in _imports("clipdoctor.doctor.registry")}
    assert not any(s.startswith(("clipdoctor.doctor.checks", "clipdoctor.doctor.runner"))
                   for s in srcs), sorted(srcs)
