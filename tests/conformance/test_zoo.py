"""Conformance: zoo models (shipped weights) and their quantized versions on the full Fashion-MNIST
test set must land within a band of the references stored in references.yaml.

A reference moves only with a deliberate change: re-measure with `python bench/observer_table.py`
or `lowbit quantize MODEL --recipe R --json -` and update the YAML in the same commit.
"""

import copy
from pathlib import Path

import pytest
import torch
import yaml

import lowbit
from lowbit.zoo import load_model, model_card

REFS = yaml.safe_load((Path(__file__).parent / "references.yaml").read_text())
CASES = [(m, r) for m, ref in REFS.items() for r in ref["recipes"]]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in REFS}


@pytest.mark.parametrize("name", sorted(REFS))
def test_fp32_accuracy_matches_card_and_floor(name, models, fmnist_test):
    ref = REFS[name]
    acc = lowbit.evaluate(models[name], fmnist_test)
    assert acc >= ref["fp32_floor"]
    assert acc == pytest.approx(model_card(name)["test_accuracy"], abs=0.05)
    assert acc == pytest.approx(ref["fp32_accuracy"], abs=0.05)


@pytest.mark.parametrize("name,recipe", CASES, ids=[f"{m}-{r}" for m, r in CASES])
def test_quantized_accuracy_within_band(name, recipe, models, fmnist_test, fmnist_calib):
    ref = REFS[name]["recipes"][recipe]
    torch.manual_seed(0)
    q = lowbit.quantize_(copy.deepcopy(models[name]), lowbit.load_recipe(recipe), data=fmnist_calib)
    acc = lowbit.evaluate(q, fmnist_test)
    assert abs(acc - ref["accuracy"]) <= ref["band_pp"], f"{name}/{recipe}: {acc:.2f} vs reference {ref['accuracy']:.2f}"
    if "max_drop_pp" in ref:
        assert REFS[name]["fp32_accuracy"] - acc <= ref["max_drop_pp"]
