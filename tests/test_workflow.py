"""The daily workflow: commands that start without torch, the cached models table, the public run API
(``cnnzoo.load_run``), the train flags spelled as torchvision's and timm's train.py, and the README's Python."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnzoo
from cnnzoo.cli import build_parser, main
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _imports(code: str) -> list[str]:
    """Which heavy modules a fresh interpreter has imported after ``code``."""
    probe = (
        f"{code}\nimport sys\nprint([m for m in ('torch', 'torchvision', 'matplotlib', 'numpy') if m in sys.modules])"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_parser_and_version_import_no_torch():
    assert _imports("import cnnzoo.cli; cnnzoo.cli.build_parser()") == []
    assert _imports("import cnnzoo; cnnzoo.__version__; cnnzoo.train") == []


def test_help_of_every_command_imports_no_torch():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"models", "train", "data", "compare", "study", "show", "export", "predict"} <= set(sub.choices)
    for command in sub.choices:
        code = f"from cnnzoo.cli import main\ntry:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass"
        assert _imports(code) == [], command


def test_lazy_public_names_still_work():
    import cnnzoo.train.config  # noqa: F401  (binding the subpackage must not hide the function)

    assert callable(cnnzoo.train) and cnnzoo.train.__module__ == "cnnzoo.train.api"
    assert cnnzoo.create_model("resnet20", num_classes=10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(AttributeError):
        cnnzoo.no_such_name  # noqa: B018


def test_models_table_cached_and_equal_to_building(monkeypatch):
    import cnnzoo.models
    from cnnzoo.analysis import profile

    sample = ["alexnet_cifar", "googlenet", "resnet20"]
    monkeypatch.setattr(cnnzoo.models, "list_models", lambda: sample)
    first = profile.zoo_table()
    calls = []
    monkeypatch.setattr(profile, "profile_model", lambda name: calls.append(name))
    assert profile.zoo_table() == first and calls == []  # the second call reads the cache
    monkeypatch.undo()
    for row in first:
        info = cnnzoo.get_model_info(row["name"])
        model = cnnzoo.create_model(row["name"], num_classes=info.num_classes)  # built for real, on the CPU
        params, aux = profile.count_params(model)
        assert row["params"] + row["aux_params"] == params, row["name"]
        assert row["macs"] == profile.count_inference(model.eval(), info.input_size)[2], row["name"]
    googlenet = next(r for r in first if r["name"] == "googlenet")
    assert googlenet["aux_params"] > 0 and googlenet["params"] == 6_624_904  # torchvision's GoogLeNet, aux apart


@pytest.mark.slow
def test_models_table_whole_zoo_matches_resnet1202():
    from cnnzoo.analysis import profile

    rows = {r["name"]: r for r in profile.zoo_table()}
    assert list(rows) == cnnzoo.list_models()
    with torch.device("meta"):
        model = cnnzoo.create_model("resnet1202", num_classes=10)
    assert rows["resnet1202"]["params"] == profile.count_params(model)[0] == 19_421_274  # He et al. 2016: 19.4M


def test_models_command_from_cache(capsys, monkeypatch):
    import cnnzoo.models

    sample = ["alexnet_cifar", "googlenet"]
    families = {name: cnnzoo.get_model_info(name).family for name in sample}
    monkeypatch.setattr(
        cnnzoo.models, "list_models", lambda family=None: [n for n in sample if family in (None, families[n])]
    )
    from cnnzoo.analysis.profile import zoo_table

    for _ in ("not cached: counts only the family", "from the cache"):
        assert main(["models", "--family", "googlenet"]) == 0
        out = capsys.readouterr().out
        assert "googlenet" in out and "alexnet_cifar" not in out
        zoo_table()  # the whole (sampled) zoo, cached
    assert main(["models", "--family", "nope"]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err


def _config(argv: list[str]):
    from cnnzoo.train.cli import config_overrides, train_model
    from cnnzoo.train.config import build_config

    args = build_parser().parse_args(["train", *argv])
    return build_config(train_model(args), args.data, recipe=args.recipe, **config_overrides(args)), args.out


@pytest.mark.parametrize(
    ("alias", "long"),
    [
        (["resnet20", "-b", "64"], ["resnet20", "--batch-size", "64"]),
        (["--model", "resnet56", "--data", "digits"], ["resnet56", "--data", "digits"]),
        (["resnet20", "--output-dir", "runs/x"], ["resnet20", "--out", "runs/x"]),
        (["resnet20", "--recipe", "vgg-paper", "--amp"], ["resnet20", "--recipe", "vgg-paper", "--precision", "auto"]),
    ],
)
def test_flag_aliases_give_the_same_config(alias, long):
    assert _config(alias) == _config(long)


def test_amp_overrides_a_recipe_precision(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('description = "x"\nprecision = "fp32"\n')
    assert _config(["resnet20", "--recipe", str(recipe)])[0].precision == "fp32"
    assert _config(["resnet20", "--recipe", str(recipe), "--amp"])[0].precision == "auto"


def test_two_different_models_refused(capsys):
    assert main(["train", "resnet20", "--model", "resnet56"]) == 2
    assert "two models given" in capsys.readouterr().err


def test_load_run_predicts_paths_pil_and_tensors(tiny_run, tmp_path):
    from PIL import Image

    run_dir, report = tiny_run
    run = cnnzoo.load_run(run_dir)
    assert not run.model.training
    assert run.classes == [str(d) for d in range(10)] and run.report["test"]["top1"] == report["test"]["top1"]
    assert (run.in_channels, run.image_size) == (1, 32) and len(run.mean) == len(run.std) == 1  # digits: grey
    assert run.config.model == "resnet20"
    pixels = torch.randint(0, 256, (2, 1, 20, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    by_path = run.predict(paths, top_k=3)
    by_pil = run.predict([Image.open(p) for p in paths], top_k=3)
    by_batch = run.predict(pixels, top_k=3)
    x = run.preprocess(paths)
    with torch.no_grad():
        probs = run.model(x).softmax(1)
    assert run.predict(x, top_k=1)[0][0][1] == pytest.approx(probs[0].max().item())  # a float batch: as given
    for got in (by_pil, by_batch):
        for a, b in zip(by_path, got, strict=True):
            assert [c for c, _ in a] == [c for c, _ in b]
            assert [p for _, p in a] == pytest.approx([p for _, p in b], abs=1e-5)
    assert len(by_path) == 2 and len(by_path[0]) == 3 and by_path[0][0][1] == pytest.approx(probs[0].max().item())
    with pytest.raises(cnnzoo.CnnzooError, match="top_k"):
        run.predict(paths, top_k=0)


def test_readme_python_runs_twice(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert 'out="runs/demo"' in code and "load_run" in code and ".predict(" in code
    monkeypatch.chdir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # from an empty folder: the snippet makes its own seven.png
    real = cnnzoo.train
    # The demo recipe, cut to one epoch on a subset: the snippet itself runs unchanged.
    monkeypatch.setattr(cnnzoo, "train", lambda *a, **k: real(*a, **k, epochs=1, quiet=True, **TINY))
    for _ in range(2):
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "demo" / "report.json").is_file() and (tmp_path / "seven.png").is_file()


def test_torchscript_export_carries_its_metadata(tiny_run, tmp_path, capsys):
    import json

    run_dir, _ = tiny_run
    dest = tmp_path / "m.ts.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--output", str(dest)]) == 0
    assert f"wrote {dest} (torchscript" in capsys.readouterr().out
    extra = {"cnnzoo.json": ""}
    torch.jit.load(str(dest), _extra_files=extra)
    meta = {k: json.loads(v) for k, v in json.loads(extra["cnnzoo.json"]).items()}
    run = cnnzoo.load_run(run_dir)
    assert meta == {
        "model": "resnet20",
        "classes": run.classes,
        "in_channels": 1,
        "image_size": 32,
        "mean": list(run.mean),
        "std": list(run.std),
    }


onnx_packages = pytest.mark.skipif(
    not all(importlib.util.find_spec(n) for n in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs the onnx extra (pip install cnnzoo[onnx]; in the dev extra, so CI runs it)",
)


@onnx_packages
def test_onnx_export_metadata_named_batch_and_predict_matches_eager(tiny_run, tmp_path, capsys):
    import json

    import onnx
    from PIL import Image

    run_dir, _ = tiny_run
    dest = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--output", str(dest)]) == 0
    assert f"wrote {dest} (onnx" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary folder left behind
    model = onnx.load(str(dest))
    props = {p.key: p.value for p in model.metadata_props}
    run = cnnzoo.load_run(run_dir)
    assert json.loads(props["cnnzoo.classes"]) == run.classes and json.loads(props["cnnzoo.image_size"]) == 32
    assert json.loads(props["cnnzoo.mean"]) == list(run.mean) and json.loads(props["cnnzoo.std"]) == list(run.std)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((torch.rand(28, 28, 3) * 255).to(torch.uint8).numpy()).save(paths[-1])
    assert main(["predict", str(dest), *map(str, paths), "--top-k", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    eager = run.predict(paths, top_k=3)
    for g, e in zip(got, eager, strict=True):
        assert [c for c, _ in g["top"]] == [c for c, _ in e]
        assert [p for _, p in g["top"]] == pytest.approx([p for _, p in e], abs=1e-4)


def test_predict_onnx_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch, capsys):
    from cnnzoo.train import tools

    real = importlib.util.find_spec
    monkeypatch.setattr(tools.importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert main(["predict", str(tmp_path / "m.onnx"), "x.png"]) == 2
    err = capsys.readouterr().err
    assert "pip install cnnzoo[onnx]" in err and len(err.strip().splitlines()) == 1


@onnx_packages
def test_predict_onnx_refuses_a_file_without_metadata(tmp_path, capsys):
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 4, 4),), str(tmp_path / "bare.onnx"), dynamo=True)
    assert main(["predict", str(tmp_path / "bare.onnx"), "x.png"]) == 2
    assert "no cnnzoo metadata" in capsys.readouterr().err
