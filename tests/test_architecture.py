"""The layering ARCHITECTURE.md agrees on, checked on the code itself: who may import whom."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    """Module file -> the top-level-qualified names it imports (anywhere in the file)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{module} imports {name}" for module, names in _imports(package).items() for name in sorted(names)
            if name.startswith(forbidden)]


def test_the_serving_process_loads_no_pipeline_code():
    """Importing and building the app pulls in neither Dagster nor the pipeline's modules."""
    code = ("import sys; from serving.app import create_app; create_app(); "
            "print(sorted({m.split('.')[0] if not m.startswith('lodestar.lineage') else m for m in sys.modules "
            "if m.startswith(('assets', 'pipelines', 'lodestar.lineage', 'dagster'))}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


_FREEZE_PROBE = """
import gc, json, sys, weakref
from pathlib import Path

from litestar.testing import TestClient
from lodestar.settings import Settings
from serving.app import create_app
from serving.server import served_app

settings = Settings(data_dir=Path(sys.argv[1]), embed_model="hashing-64")
out = {"threshold_before": gc.get_threshold()}
with TestClient(create_app(settings)):
    out["plain_app"] = gc.get_freeze_count()
with TestClient(served_app(settings)) as client:
    assert client.app.state.embedder_loaded.wait(60)  # its second freeze is done
    out["served_app"] = gc.get_freeze_count()
    out["threshold"] = gc.get_threshold()

    class Node:
        pass

    node = Node()
    node.me = node  # a reference cycle made after the freeze: the collector still frees it
    alive = weakref.ref(node)
    del node
    gc.collect()
    out["cycle_freed"] = alive() is None
with TestClient(served_app(settings)) as client:
    assert client.app.state.embedder_loaded.wait(60)
    out["second_served_app"] = gc.get_freeze_count()
print(json.dumps(out))
"""


def test_the_served_process_freezes_what_it_holds_at_startup_once(tmp_path):
    """`lodestar serve`'s app moves what exists at its startup out of the collector's sight and
    makes full collections rarer (serving.app.freeze_long_lived); an app made elsewhere (tests,
    tools) leaves the process's collector alone; a second served app in the same process freezes
    nothing more."""
    result = subprocess.run([sys.executable, "-c", _FREEZE_PROBE, str(tmp_path / "var")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["plain_app"] == 0
    assert out["served_app"] > 50_000  # the modules alone are tens of thousands of objects
    if sys.version_info < (3, 14):  # 3.14's incremental collector has no third threshold
        assert out["threshold"] == [out["threshold_before"][0], out["threshold_before"][1], 100]
        assert out["threshold_before"][2] == 10
    assert out["cycle_freed"] is True
    assert out["second_served_app"] <= out["served_app"]


@pytest.mark.parametrize("package, forbidden", [
    ("serving", ("assets", "pipelines", "lodestar.lineage", "dagster")),
    ("assets", ("pipelines", "serving", "litestar")),  # pipelines composes assets, never the other way round
    ("lodestar", ("dagster", "litestar", "assets", "pipelines", "serving")),
])
def test_layers_import_only_downwards(package, forbidden):
    offenders = _offenders(package, forbidden)
    if package == "lodestar":  # the CLI is the one place that wires the layers together
        offenders = [o for o in offenders if not o.startswith("lodestar/cli.py")]
    assert offenders == []


def test_the_monolithic_stages_module_is_gone():
    assert not (ROOT / "lodestar" / "stages.py").exists()
    assert sorted(p.stem for p in (ROOT / "lodestar" / "lineage").glob("*.py")) == [
        "__init__", "collab_fit", "embeddings", "evaluation_gate", "extracts", "feature_tables", "files",
        "index_build", "publishing", "segment_refresh"]


def test_the_api_process_does_not_load_the_pipelines_statistics_and_learning_libraries():
    """scikit-learn, statsmodels and SciPy fit models and analyse results in the pipeline (and for an
    experiment's analysis on demand); importing them with the app cost every API worker about 80 MB
    before its first tenant (issue 13's memory per worker). They are imported where they are used."""
    probe = ("import sys, serving.app; "
             "print(sorted(m for m in ('sklearn', 'statsmodels', 'scipy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
