"""Policy: construction, validation, JSON round trip, the per-layer table."""

import json

import pytest

from certquant.models import build
from certquant.quant import Policy, format_cost_table, quantizable_layers
from certquant.utils.errors import CertquantError


@pytest.fixture(scope="module")
def layers():
    return quantizable_layers(build("small-cnn"), (1, 28, 28))


def test_uniform_and_bits(layers):
    policy = Policy.uniform(layers, 4, 8, arch="small-cnn")
    assert policy.names == [l.name for l in layers]
    assert policy.bits("1.3") == (4, 8) and policy.w_bits == [4] * 4 and policy.a_bits == [8] * 4
    pinned = Policy.uniform(layers, 3, first_last_bits=8)
    assert pinned.bits("1.0") == (8, 8) and pinned.bits("1.9") == (8, 8) and pinned.bits("1.3") == (3, 3)


def test_json_round_trip(layers, tmp_path):
    policy = Policy.from_lists(layers, [8, 4, 2, 32], [8, 3, 4, 32], arch="small-cnn")
    assert Policy.from_json(policy.to_json()) == policy
    path = policy.save(tmp_path / "p.json")
    loaded = Policy.load(path)
    assert loaded == policy and loaded.arch == "small-cnn"
    data = json.loads(path.read_text())
    assert [entry["name"] for entry in data["layers"]] == policy.names  # forward order kept in the file


@pytest.mark.parametrize("bad", [0, 33, -1, 4.5, True, "4"])
def test_bits_outside_range_refused(layers, bad):
    with pytest.raises(CertquantError, match=r"integer in \[1, 32\]"):
        Policy({"1.0": (bad, 8)})
    with pytest.raises(CertquantError, match=r"integer in \[1, 32\]"):
        Policy.from_lists(layers, [4, 4, 4, 4], [4, 4, bad, 4])


def test_validate_unknown_missing_and_other_arch(layers):
    unknown = Policy({**{l.name: (4, 4) for l in layers}, "1.fc": (4, 4)})
    with pytest.raises(CertquantError, match=r"1 layer\(s\) that the model does not have \(1.fc\)"):
        unknown.validate(layers)
    missing = Policy({l.name: (4, 4) for l in layers[:-1]})
    with pytest.raises(CertquantError, match=r"no bits for 1 layer\(s\)"):
        missing.validate(layers)
    other = Policy.uniform(layers, 4, arch="lenet5")
    with pytest.raises(CertquantError, match="made for architecture 'lenet5', not 'small-cnn'"):
        other.validate(layers, "small-cnn")
    Policy.uniform(layers, 4, arch="small-cnn").validate(layers, "small-cnn")


def test_errors_are_one_line(layers, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for call in (
        lambda: Policy.load(bad),
        lambda: Policy.load(tmp_path / "none.json"),
        lambda: Policy.from_json('{"format": "other"}'),
        lambda: Policy.from_lists(layers, [4], [4]),
    ):
        with pytest.raises(CertquantError) as info:
            call()
        assert "\n" not in str(info.value)


def test_table_marks_layer_left_at_32_bits(layers):
    policy = Policy.from_lists(layers, [8, 4, 4, 32], [8, 4, 4, 8])
    table = format_cost_table(layers, policy)
    rows = table.splitlines()
    last = next(r for r in rows if r.split()[:2] == ["3", "1.9"])
    assert "FP32" in last and "not quantized" in last
    assert "WARNING: 1 layer(s) left at 32 bits (not quantized): 1.9" in table
    assert "FP32" not in next(r for r in rows if r.split()[:2] == ["1", "1.3"])
    assert "3,612,672" in table and "57,802,752" in table  # MACs and BitOPs (x16) of the second conv
    assert policy.table(layers) == table
    assert "WARNING" not in Policy.uniform(layers, 4).table(layers)
