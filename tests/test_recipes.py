"""Recipes run end to end on tiny settings."""

import importlib.util
import pathlib

RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_recipe_trains_saves_and_reloads(capsys):
    assert _load("smoke").main(["--steps", "4", "--batch-size", "4", "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "jit_compile=True" in out and "max |difference| = 0.00e+00" in out
