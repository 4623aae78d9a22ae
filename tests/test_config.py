"""TrialConfig: validation messages, exact YAML round-trip, presets, dotted overrides."""

from __future__ import annotations

import pytest
import yaml

from compvae.config import PRESETS, TrialConfig, preset
from compvae.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml_exactly(name, tmp_path):
    cfg = preset(name)
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = TrialConfig.from_yaml(path)
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()


def test_float_values_survive_round_trip(tmp_path):
    cfg = TrialConfig().with_updates({"mask.threshold": 0.0123456789012345, "parent.beta": 1e-7})
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = TrialConfig.from_yaml(path)
    assert again.mask.threshold == 0.0123456789012345
    assert again.parent.beta == 1e-7


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mask": {"thresold": 0.1}}, "mask.thresold: unknown field"),
        ({"mask": {"blur_sigma": -1}}, "mask.blur_sigma: Input should be greater than or equal to 0"),
        ({"mask": {"threshold": 2}}, "mask.threshold: Input should be less than or equal to 1"),
        ({"child": {"masking_mode": "foo"}}, "child.masking_mode: Input should be 'none', 'input', 'loss' or 'both'"),
        ({"parent": {"beta": "big"}}, "parent.beta: Input should be a valid number"),
        ({"parent": {"resolution": 48}}, "parent.resolution"),
        ({"parent": {"resolution": 64}, "child": {"resolution": 32}}, "child.resolution (32) must be >= parent.resolution (64)"),
        ({"mask": {"latent": 12}}, "mask.latent (12) must be < parent.latent_dim (10)"),
        ({"data": {"name": "dsprites"}}, "data.path is required for dataset 'dsprites'"),
        ({"child": {"conditioning": True}}, "child.conditioning needs parent.mode: joint"),
        ({"child": {"epochs": 0}}, "child.epochs: Input should be greater than or equal to 1"),
        ({"child": {"conditioning_start": 1.0}}, "child.conditioning_start: Input should be less than 1"),
        ({"child": {"conditioning_start": -0.1}}, "child.conditioning_start: Input should be greater than or equal to 0"),
        ({"child": {"conditioning_ramp": 0.0}}, "child.conditioning_ramp: Input should be greater than 0"),
        ({"child": {"conditioning_ramp": 1.5}}, "child.conditioning_ramp: Input should be less than or equal to 1"),
        ({"child": {"conditioning_max": 0.0}}, "child.conditioning_max: Input should be greater than 0"),
        ({"child": {"conditioning_max": 1.2}}, "child.conditioning_max: Input should be less than or equal to 1"),
    ],
)
def test_invalid_fields_give_one_line_naming_the_field(data, needle):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict(data)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("parent:\n  beta: [1, 2\nchild: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: broken YAML at line \d+"):
        TrialConfig.from_yaml(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        TrialConfig.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        TrialConfig.from_yaml(tmp_path / "list.yaml")


def test_dotted_overrides_and_flat_params():
    cfg = preset("quick").with_updates({"child.masking_mode": "both", "mask.blur_sigma": 2.5})
    flat = cfg.flat()
    assert flat["child.masking_mode"] == "both"
    assert flat["mask.blur_sigma"] == 2.5
    assert flat["parent.resolution"] == 32
    # every flat key maps back to the same config
    rebuilt = TrialConfig().with_updates(flat)
    assert rebuilt == cfg
    with pytest.raises(ConfigError, match="mask.nope: unknown field"):
        cfg.with_updates({"mask.nope": 1})


def test_yaml_is_plain_types():
    doc = yaml.safe_load(preset("paper").to_yaml())
    assert doc["child"]["resolution"] == 256
    assert doc["mask"]["latent"] == "auto"
