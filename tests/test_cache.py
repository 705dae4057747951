import json

from layerwise.cache import Store, code_version, stage_key

PRETRAIN = {"seed": 0, "data": {"train_size": None, "val_size": 10000, "split_seed": 0},
            "layers": [{"size": 1000, "l1": 0.03, "epochs": 3}, {"size": 500, "l1": 0.03, "epochs": 3}]}


def _with(**changes):
    copy = json.loads(json.dumps(PRETRAIN))
    copy.update(changes)
    return copy


def test_stage_key_depends_on_what_determines_the_stage():
    base = stage_key(PRETRAIN, 1, "fp")
    assert stage_key(PRETRAIN, 1, "fp") == base
    assert stage_key(PRETRAIN, 2, "fp") != base
    assert stage_key(PRETRAIN, 1, "other-data") != base
    assert stage_key(_with(seed=1), 1, "fp") != base
    assert stage_key(_with(data={**PRETRAIN["data"], "split_seed": 1}), 1, "fp") != base


def test_stage_key_ignores_layers_above_it():
    changed_top = _with(layers=[PRETRAIN["layers"][0], {"size": 250, "l1": 0.1, "epochs": 9}])
    assert stage_key(changed_top, 1, "fp") == stage_key(PRETRAIN, 1, "fp")
    assert stage_key(changed_top, 2, "fp") != stage_key(PRETRAIN, 2, "fp")


def test_code_version_is_stable_hex():
    assert code_version() == code_version() and len(code_version()) == 12


def test_store_round_trip_and_first_writer_wins(tmp_path):
    store = Store(tmp_path / "stages")
    assert store.get("k") is None
    src = tmp_path / "w.pt"
    src.write_bytes(b"first")
    entry = store.put("k", {"w.pt": src}, {"run_id": "a"})
    assert entry.file("w.pt").read_bytes() == b"first" and entry.meta["run_id"] == "a"
    src.write_bytes(b"second")
    again = store.put("k", {"w.pt": src}, {"run_id": "b"})
    assert again.meta["run_id"] == "a" and again.file("w.pt").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "stages").iterdir()] == ["k"]  # no staging folders left


def test_an_entry_missing_a_file_is_not_returned(tmp_path):
    store = Store(tmp_path)
    src = tmp_path / "w.pt"
    src.write_bytes(b"x")
    entry = store.put("k", {"w.pt": src}, {})
    entry.file("w.pt").unlink()
    assert store.get("k") is None
