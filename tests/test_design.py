"""The package map holds: each part of src/flowood imports only the parts the design allows (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "flowood"
NEUTRAL = {"outputs", "runtime", "checkpoints", "resources", "htmlpage", "allocator", "tables"}
BASE = {"errors", "options", "variants"}
#: what each part may import from flowood (besides the package root's version and itself)
ALLOWED = {
    "errors": set(),
    "options": {"errors"},
    "variants": {"errors", "options"},
    "flows": BASE,
    **{name: BASE | {"flows"} | NEUTRAL for name in NEUTRAL},
    "data": BASE,
    "engines": BASE | {"flows", "data"} | NEUTRAL,  # data: an INT8 export is calibrated and checked on data sets
    "ood": BASE | {"flows", "engines"} | NEUTRAL,
    "training": BASE | {"flows", "data"} | NEUTRAL,
    "evaluation": BASE | {"flows", "data", "engines", "ood"} | NEUTRAL,
    "inspect": BASE | {"flows", "data", "ood"} | NEUTRAL,
    "embed": BASE | {"data"} | NEUTRAL,
    "deploy": BASE | {"flows", "data", "engines", "ood", "embed", "training", "evaluation"} | NEUTRAL,
}


def _part(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "flowood" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_part_imports_only_what_the_design_allows():
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        part = _part(path)
        if part not in ALLOWED:
            continue  # reproduce, cli and the package root may import everything
        bad = _imports(path) - ALLOWED[part] - {part}
        if bad:
            offences.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    assert not offences, "\n".join(offences)


def test_the_flow_core_stays_light():
    import subprocess
    import sys

    code = ("import sys; import flowood.flows; "
            "print(sorted(m for m in ('lightning', 'matplotlib', 'sklearn', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _structure():
    import sys
    sys.path.insert(0, str(SRC.parents[1] / "scripts"))
    try:
        import structure
    finally:
        sys.path.pop(0)
    return structure, structure.modules(SRC)


#: public callables allowed more than 8 parameters, the documented configuration constructors (docs/design.md): the
#: option constructor, the paper's ResNet st-network (the original's options one by one) and the detector pipeline
#: (scikit-learn's convention: an estimator's constructor takes its parameters).
LONG_SIGNATURES = {"options.option (9)", "flows.nets.ResNetST.__init__ (9)",
                   "deploy.pipeline.DetectorPipeline.__init__ (9)"}


def test_no_public_callable_takes_more_than_8_parameters():
    structure, trees = _structure()
    assert set(structure.long_signatures(trees)) <= LONG_SIGNATURES


def test_few_imports_hide_inside_functions():
    structure, trees = _structure()
    found = structure.local_imports(trees)
    assert len(found) < 20, "\n".join(found)


def test_no_module_reaches_into_another_modules_private_names():
    structure, trees = _structure()
    assert structure.private_reaches(trees) == []


def test_no_import_cycles_between_modules():
    structure, trees = _structure()
    assert structure.cycles(structure.import_arrows(trees)) == []
