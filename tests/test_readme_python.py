"""The README's "From Python" example runs as written."""

import re

import numpy as np

from nca_testing import REPO


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"## From Python\n.*?```python\n(.*?)```", readme, re.DOTALL)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(REPO / "tests" / "data")
    monkeypatch.chdir(tmp_path)  # its paths are relative to the checkout; its run dir goes here
    names = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the documentation's own code
    assert names["frames"].shape == (13, 72, 72, 16)
    assert int((np.asarray(names["final"])[..., 3] > 0.1).sum()) > 100  # the lizard grew
    assert names["summary"]["step"] == 10 and (tmp_path / "outputs" / "from_python" / "summary.json").is_file()
    assert names["trained"].num_channels == 16 and (tmp_path / "outputs" / "from_python.json").is_file()
    assert names["untrained"].perceive.out_features == 48
