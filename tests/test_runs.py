"""Run folders from outside the pipeline (meow_app/runs.py): names, run.json / probes.json, the zip."""

import zipfile

import pytest

from meow_app import runs
from meow_app.errors import MeowError


def test_run_folders_are_named_read_and_zipped(tmp_path):
    a, b = runs.new_run_dir(tmp_path / "s1", "meow"), runs.new_run_dir(tmp_path / "s1", "meow")
    assert a != b and a.parent == tmp_path / "s1" and "-meow-" in a.name and not a.exists()
    a.mkdir(parents=True)
    assert runs.run_json(a) is None and runs.run_json("embedded") is None  # not a run folder
    (a / "run.json").write_text('{"method": "meow"}')
    (a / "model").mkdir()
    (a / "model" / "config.json").write_text("{}")
    assert runs.run_json(a) == {"method": "meow"}
    with pytest.raises(MeowError, match="probes.json: cannot read"):
        runs.probes_json(a)
    (a / "run.json").write_text("{broken")
    with pytest.raises(MeowError, match="run.json: cannot read"):
        runs.run_json(a)
    zipped = runs.zip_run(a, tmp_path)
    assert zipped == tmp_path / f"{a.name}.zip"
    names = zipfile.ZipFile(zipped).namelist()
    assert sorted(names) == [f"{a.name}/model/config.json", f"{a.name}/run.json"]
    assert runs.zip_run(a).parent != tmp_path  # a fresh temporary folder by default
