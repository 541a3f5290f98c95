import pytest

import lowbit
from lowbit.config import Override, QuantSpec, Select
from lowbit.errors import ConfigError
from lowbit.quant import Affine, IntFormat, PerChannel, PerGroup


@pytest.mark.parametrize("name", sorted(lowbit.list_recipes()))
def test_every_recipe_round_trips_through_yaml(name):
    cfg = lowbit.load_recipe(name)
    assert type(cfg).from_yaml(cfg.to_yaml()) == cfg
    assert lowbit.list_recipes()[name]  # documented in one line


def test_required_recipes_exist():
    assert {"w8a8", "w8a8-per-tensor", "w4a8", "w4a4", "w2a8", "w4-weight-only"} <= set(lowbit.list_recipes())


def test_unknown_recipe_names_known_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'w3a3'.*w8a8"):
        lowbit.load_recipe("w3a3")


def test_unknown_recipe_key_names_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kind: ptq\nweight: {bits: 4, granularty: per_channel}\n")
    with pytest.raises(ConfigError, match="'granularty'.*known keys"):
        lowbit.load_recipe(str(p))
    p.write_text("kind: ptq\nwieght: {bits: 4}\n")
    with pytest.raises(ConfigError, match="'wieght'"):
        lowbit.load_recipe(str(p))


def test_bits_out_of_range_in_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kind: ptq\nweight: {bits: 17}\n")
    with pytest.raises(ConfigError, match="bits=17"):
        lowbit.load_recipe(str(p))


def test_version_is_checked():
    with pytest.raises(ConfigError, match="version 2"):
        lowbit.PTQConfig.from_dict({"kind": "ptq", "version": 2})


def test_override_patches_base_spec():
    cfg = lowbit.PTQConfig.from_dict({
        "kind": "ptq",
        "weight": {"bits": 4, "granularity": "per_group", "group_size": 8},
        "overrides": [{"select": "fc", "weight": {"bits": 8, "granularity": "per_channel"}}, {"select": {"regex": "stem"}, "activation": "float"}],
    })
    ov = cfg.overrides[0]
    assert ov.weight.bits == 8 and isinstance(ov.weight.granularity, PerChannel)
    assert cfg.overrides[1].activation is None


def test_spec_validation():
    with pytest.raises(ConfigError, match="unknown observer"):
        QuantSpec(observer="magic")
    with pytest.raises(ConfigError, match="dynamic"):
        QuantSpec(observer="mse", dynamic=True)
    with pytest.raises(ConfigError, match="group_size"):
        QuantSpec.from_dict({"granularity": "per_group"})
    with pytest.raises(ConfigError, match="exactly one"):
        Select(name="a", regex="b")
    with pytest.raises(ConfigError, match="group_policy"):
        lowbit.PTQConfig(group_policy="maybe")


def test_configs_are_frozen_and_typed():
    spec = QuantSpec(format=IntFormat(bits=4, signed=False), mapping=Affine(), granularity=PerGroup(16))
    with pytest.raises(AttributeError):
        spec.observer = "mse"  # type: ignore[misc]
    assert spec.describe() == "uint4 affine per_group(16) minmax"
    assert isinstance(Override.from_dict({"select": "x"}).select, Select)


def test_add_activation_patches_the_activation_spec():
    cfg = lowbit.PTQConfig.from_yaml("""
activation: {bits: 2, signed: false, mapping: affine, observer: mse}
add_activation: {bits: 8}
""")
    assert cfg.add_activation.bits == 8 and cfg.add_activation.observer == "mse" and not cfg.add_activation.format.signed
    assert lowbit.PTQConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError, match="add_activation must be a QuantSpec"):
        lowbit.PTQConfig(add_activation=8)
