"""`cnnzoo predict`: top-k class names with probabilities for image files, via cnnzoo.data.load_images."""

from __future__ import annotations

import argparse
import json


def _cli(argv: list[str]) -> int:
    from cnnzoo.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_predict_top_k_names_and_probabilities(tiny_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    out, _ = tiny_run
    digits = load_digits()
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).resize((32, 32)).save(path)
        paths.append(str(path))
    assert _cli(["predict", str(out), *paths, "--top-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == paths
    for r in results:
        names, probs = zip(*r["top"], strict=True)
        assert len(names) == 3 and set(names) <= {str(d) for d in range(10)}
        assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert _cli(["predict", str(out), paths[0], "--top-k", "2"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == paths[0] and len(text) == 3 and text[1].strip().endswith(tuple("0123456789"))
