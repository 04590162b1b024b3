"""``pip install .`` works: the wheel builds, asks for ranges (not this machine's pins), carries the embedded
default recipe, and the installed copy imports and runs from outside the repository."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports_outside_the_checkout(tmp_path):
    import shutil

    source = tmp_path / "source"  # a copy: setuptools writes build/ and *.egg-info next to the project it builds
    shutil.copytree(ROOT / "compress", source / "compress", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("convnet_compress-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith("METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in archive.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
        assert "compress/recipe/default.yaml" in archive.namelist()
    assert "torch>=2.4" in requires and not any("==" in r.split(";")[0] for r in requires), requires
    assert any(r.startswith("onnxruntime") for r in requires)  # a core dependency
    assert any(r.startswith("openvino") and 'extra == "openvino"' in r for r in requires)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    probe = ("import compress, compress.recipe.schema as s; assert compress.__file__.startswith(%r), "
             "compress.__file__; print(len(s.load_recipe(None).steps))" % str(target))
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1
