"""The README's NumPy example runs as written (keeps the README true)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)  # it writes char.npz
    env: dict = {}
    exec(compile(blocks[1], str(README), "exec"), env)
    assert len(env["history"].loss) == 100
    assert env["history"].loss[-1] < env["history"].loss[0]
    assert capsys.readouterr().out.startswith("The ")


def test_readme_numpy_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "no python block in README.md"
    env: dict = {}
    exec(compile(blocks[0], str(README), "exec"), env)
    assert env["y"].shape == (50, 8, 32) and env["dW"].shape == (128, 16)
    assert env["out"].shape == (50, 8, 64) and env["h_n"].shape == (4, 8, 32)
    assert np.all(np.isfinite(env["dx"]))


def test_readme_gpu_example_runs():
    """The GPU block, after the NumPy one (it uses its x, W, R)."""
    import pytest

    import lstm_ext

    if not lstm_ext.cuda_available():
        pytest.skip(reason=lstm_ext.cuda_status())
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    env: dict = {}
    exec(compile(blocks[0], str(README), "exec"), env)
    exec(compile(blocks[2], str(README), "exec"), env)
    assert isinstance(env["y"], cupy.ndarray) and env["y"].shape == (50, 8, 32)
    assert isinstance(env["dW"], cupy.ndarray) and env["dW"].shape == (128, 16)
