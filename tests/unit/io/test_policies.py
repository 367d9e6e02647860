"""Policy files: every unit's ratio, what it was made for, and one-line errors for bad files."""

from __future__ import annotations

import json

import pytest

from compressor.errors import UserError
from compressor.io import policies


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


UNITS = [f"features.{i}.conv.0.0" for i in range(20)]


def write(tmp_path, **overrides) -> str:
    fields = dict(model="mobilenet_v2", dataset="fashion-mnist", input_size=32,
                  policy={UNITS[0]: 0.5, UNITS[3]: 0.25}, units=UNITS,
                  budget={"latency": 0.5}, metrics={"top1": 90.0}, extra={"seed": 0})
    fields.update(overrides)
    return str(policies.write_policy(tmp_path / "policy.json", **fields))


def test_policy_round_trip_fills_every_unit_and_records_versions(tmp_path):
    path = write(tmp_path)
    policy = policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert policy == {name: {UNITS[0]: 0.5, UNITS[3]: 0.25}.get(name, 0.0) for name in UNITS}
    blob = json.loads(open(path).read())
    assert blob["seed"] == 0 and "onnxruntime" in blob["provenance"]["versions"]
    assert blob["budget"] == {"latency": 0.5}


def test_write_policy_refuses_units_it_does_not_list(tmp_path):
    with pytest.raises(ValueError, match="not in `units`"):
        write(tmp_path, policy={"nope": 0.5})


def test_hand_written_policy_needs_only_the_mapping(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"policy": {UNITS[1]: 0.3}}))
    assert policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS) == {UNITS[1]: 0.3}


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"model": "mobilenet_v2"}', "no 'policy' mapping"),
    ('[1, 2]', "no 'policy' mapping"),
    ('{"policy": [0.5]}', "no 'policy' mapping"),
    ('{"format": "other-v9", "policy": {}}', "has format 'other-v9'"),
    ('{"model": "resnet18", "policy": {}}', "made for resnet18, not mobilenet_v2"),
    ('{"policy": {"features.1.conv.0.O": 0.5}}', "did you mean 'features.1.conv.0.0'"),
    ('{"policy": {"features.1.conv.0.0": 1.0}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": -0.1}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": "0.5"}}', "outside [0, 1)"),
    ('{"policy": {"features.1.conv.0.0": true}}', "outside [0, 1)"),
])
def test_bad_policy_files_are_one_line_user_errors(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert message in one_line(exc) and str(path) in str(exc.value)


def test_unknown_unit_lists_valid_units_shortened(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"policy": {"classifier": 0.5}}')
    with pytest.raises(UserError) as exc:
        policies.read_policy(path, model="mobilenet_v2", valid_units=UNITS)
    assert UNITS[0] in one_line(exc) and "(20 in all)" in str(exc.value)
    assert UNITS[-1] not in str(exc.value)


def test_missing_policy_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        policies.read_policy(tmp_path / "none.json", model=None, valid_units=UNITS)
