"""ternlm on Ray when the extra is not installed: nothing imports Ray until it is used,
and using it is an ImportError (or, from the command line, exit status 2) that names the
extra. Runs in the main suite; tests/test_ray.py runs the real thing (make test-ray)."""
import subprocess
import sys

import pytest

import ternlm.batch
import ternlm.ray
from ternlm.cli import main


def test_importing_ternlm_does_not_import_ray():
    code = ("import sys, ternlm, ternlm.batch, ternlm.ray, ternlm.server.cli, ternlm.cli; "
            "ternlm.cli.build_parser(); print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_extra_is_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)            # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ternlm\[ray\]'"):
        ternlm.batch.generate(["a"], model="some/model")
    with pytest.raises(ImportError, match=r"ternlm\[ray\]"):
        ternlm.ray.app("some/model")
    assert main(["serve", "--ray", "--model", "some/model"]) == 2
    assert "pip install 'ternlm[ray]'" in capsys.readouterr().err


def test_bad_job_arguments_fail_before_ray_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match="actors must be an int >= 1"):
        ternlm.batch.generate(["a"], model="m", actors=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        ternlm.batch.perplexity(["a"], model="m", batch_size=-3)
    with pytest.raises(ValueError, match="model must be a path or a Hub id"):
        ternlm.batch.generate(["a"], model="")


def test_serve_ray_flags_need_ray(capsys):
    for flags in (["--replicas", "2"], ["--max-replicas", "3"], ["--ray-address", "auto"]):
        assert main(["serve", *flags]) == 2
        assert f"{flags[0]} applies to --ray" in capsys.readouterr().err
    assert main(["serve", "--min-replicas", "1", "--ray-address", "auto"]) == 2
    assert "--min-replicas, --ray-address apply to --ray" in capsys.readouterr().err
