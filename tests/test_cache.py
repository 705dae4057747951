import json
import logging
import shutil

import numpy as np
import pytest
import torch

from layerwise.store.cache import TRAINING_SOURCES, Store, code_version, load_file, stage_key

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


def _stored(store, tmp_path, key, value=0.0, run_id="a"):
    """A real entry: a torch weights file and the results other runs would reuse."""
    src = tmp_path / f"{key}-src.pt"
    torch.save({"w": torch.full((64,), value)}, src)
    return store.put(key, {"w.pt": src}, {"run_id": run_id, "metrics": {"test_error": 2.5}})


def _truncate(entry, tmp_path):
    data = entry.file("w.pt").read_bytes()
    entry.file("w.pt").write_bytes(data[:len(data) // 2])


def _swap(entry, tmp_path):  # a valid torch file, of another entry
    other = _stored(Store(tmp_path / "other"), tmp_path, "other", value=1.0)
    shutil.copyfile(other.file("w.pt"), entry.file("w.pt"))


def _edit_metric(entry, tmp_path):
    meta = json.loads(entry.file("meta.json").read_text())
    meta["metrics"]["test_error"] = 0.1
    entry.file("meta.json").write_text(json.dumps(meta))


def _old_format(entry, tmp_path):  # what earlier versions wrote: a list of files, no checksum
    meta = json.loads(entry.file("meta.json").read_text())
    entry.file("meta.json").write_text(json.dumps({"run_id": meta["run_id"], "metrics": meta["metrics"],
                                                   "files": ["w.pt"]}))


DAMAGE = {
    "truncated file": (_truncate, "w.pt does not match its checksum"),
    "swapped file": (_swap, "w.pt does not match its checksum"),
    "deleted file": (lambda entry, _: entry.file("w.pt").unlink(), "w.pt is missing"),
    "missing meta": (lambda entry, _: entry.file("meta.json").unlink(), "meta.json is missing"),
    "garbled meta": (lambda entry, _: entry.file("meta.json").write_text('{"run_id": "a", "metr'),
                     "meta.json is unreadable"),
    "edited metric": (_edit_metric, "meta.json does not match its checksum"),
    "old format": (_old_format, "no checksum"),
}


def _assert_set_aside(store, key, warnings, why):
    """Exactly one warning, naming the entry, where it went and why; the folder is kept there."""
    [line] = warnings
    [aside] = (store.root / ".damaged").iterdir()
    assert aside.name.startswith(f"{key}-") and any(aside.iterdir())  # kept for inspection, not deleted
    assert str(store.root / key) in line and str(aside) in line and why in line


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_set_aside_with_one_warning_and_reads_as_absent(tmp_path, damage):
    warnings = []
    store = Store(tmp_path / "stages", warn=warnings.append)
    harm, why = DAMAGE[damage]
    harm(_stored(store, tmp_path, "k"), tmp_path)
    assert store.get("k") is None
    _assert_set_aside(store, "k", warnings, why)
    assert not (store.root / "k").exists()
    assert store.get("k") is None and len(warnings) == 1  # gone: no second warning


def test_an_intact_entry_verifies_on_every_get(tmp_path):
    warnings = []
    store = Store(tmp_path, warn=warnings.append)
    _stored(store, tmp_path, "k")
    for _ in range(2):
        entry = store.get("k")
        assert entry.meta["metrics"] == {"test_error": 2.5} and torch.load(entry.file("w.pt"))["w"].sum() == 0
    assert warnings == [] and not (tmp_path / ".damaged").exists()


@pytest.mark.parametrize("damage", ["truncated file", "garbled meta", "old format"])
def test_put_over_a_damaged_entry_sets_it_aside_and_stores_the_new_one(tmp_path, damage):
    warnings = []
    store = Store(tmp_path / "stages", warn=warnings.append)
    harm, why = DAMAGE[damage]
    harm(_stored(store, tmp_path, "k"), tmp_path)
    entry = _stored(store, tmp_path, "k", value=3.0, run_id="b")
    assert entry.meta["run_id"] == "b" and torch.load(entry.file("w.pt"))["w"][0] == 3.0
    _assert_set_aside(store, "k", warnings, why)
    assert store.get("k").meta["run_id"] == "b"


def test_a_concurrent_writers_intact_entry_is_kept_without_warning(tmp_path):
    warnings = []
    store = Store(tmp_path, warn=warnings.append)
    _stored(store, tmp_path, "k", run_id="theirs")
    assert _stored(store, tmp_path, "k", value=5.0, run_id="mine").meta["run_id"] == "theirs"
    assert warnings == [] and not (tmp_path / ".damaged").exists()


def test_the_warning_goes_to_the_layerwise_logger_by_default(tmp_path, caplog):
    store = Store(tmp_path)
    _stored(store, tmp_path, "k").file("w.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="layerwise"):
        assert store.get("k") is None
    [record] = caplog.records
    assert record.name == "layerwise" and str(tmp_path / "k") in record.getMessage()


def test_an_entry_that_verifies_but_does_not_load_is_set_aside_without_torchs_advice(tmp_path):
    warnings = []
    store = Store(tmp_path, warn=warnings.append)
    src = tmp_path / "pickled.pt"
    torch.save({"w": np.zeros(3)}, src)  # a checksum of what was stored, but not a plain tensor file
    store.put("k", {"w.pt": src}, {"run_id": "a"})
    assert store.load("k", lambda entry: torch.load(entry.file("w.pt"), weights_only=True)) is None
    _assert_set_aside(store, "k", warnings, "does not load: UnpicklingError")
    assert "weights_only" not in warnings[0] and "numpy" in warnings[0]


def test_load_file_names_the_file_and_drops_torchs_advice(tmp_path):
    for name, content in [("pickled.pt", {"w": np.zeros(3)}), ("truncated.pt", {"w": torch.zeros(64)})]:
        torch.save(content, tmp_path / name)
    data = (tmp_path / "truncated.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    for name in ("pickled.pt", "truncated.pt"):
        with pytest.raises(RuntimeError) as caught:
            load_file(tmp_path / name, lambda path: torch.load(path, weights_only=True))
        message = str(caught.value)
        assert str(tmp_path / name) in message and "weights_only" not in message and "\n" not in message


# ---- the code version: the training code's bytes, nothing else --------------------------------------
# A real check on a copy of the sources: layerwise.store.cache.PACKAGE is pointed at a copy of the package
# (beside copies of flows/ and tasks/), the copy's files are edited, and the real hash is taken.

@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A copy of layerwise/, flows/ and tasks/ under tmp_path; the code version reads the copy."""
    from layerwise.store import cache

    repo = cache.PACKAGE.parent
    copy = tmp_path / "repo"
    for package in ("layerwise", "flows", "tasks"):
        shutil.copytree(repo / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE", copy / "layerwise")
    return copy


def _append_comment(path):
    with open(path, "a") as handle:
        handle.write("\n# an edit that changes no behaviour\n")


def _keys():
    return code_version(), stage_key(PRETRAIN, 1, "fp"), stage_key(PRETRAIN, 2, "fp")


def test_the_code_version_is_read_from_the_package_it_points_at(sources):
    version, *keys = _keys()
    original = (sources / "layerwise" / "train" / "loop.py").read_bytes()
    _append_comment(sources / "layerwise" / "train" / "loop.py")
    assert code_version() != version
    (sources / "layerwise" / "train" / "loop.py").write_bytes(original)
    assert _keys() == (version, *keys)  # the bytes, not the path or the time of the edit


@pytest.mark.parametrize("name", TRAINING_SOURCES)
def test_editing_the_training_code_changes_the_code_version_and_every_stage_key(sources, name):
    before = _keys()
    _append_comment(sources / "layerwise" / name)
    after = _keys()
    assert all(new != old for new, old in zip(after, before)), f"editing {name} left a key unchanged"
    assert len(after[0]) == 12 and after == _keys()


@pytest.mark.parametrize("path", ["flows/pipeline.py", "flows/ablation.py", "tasks/finetune.py", "tasks/pretrain.py",
                                  "tasks/tracking.py", "layerwise/store/cache.py", "layerwise/report/tables.py",
                                  "layerwise/new_module.py"])  # the last one is created by the edit
def test_editing_a_flow_a_task_or_other_code_keeps_the_code_version_and_the_stage_keys(sources, path):
    assert path not in {f"layerwise/{name}" for name in TRAINING_SOURCES}
    before = _keys()
    _append_comment(sources / path)
    assert (sources / path).read_text().endswith("# an edit that changes no behaviour\n")
    assert _keys() == before


def test_a_running_process_keys_by_the_code_it_loaded_not_by_later_edits(sources, monkeypatch):
    """A sweep runs for hours while its sources are edited: its keys stay those of the code it runs."""
    from layerwise.store import cache

    monkeypatch.setattr(cache, "_RUNNING", (cache.PACKAGE, cache._hash_sources(cache.PACKAGE)))  # as at start
    before = _keys()
    _append_comment(sources / "layerwise" / "train" / "loop.py")
    assert _keys() == before
    assert cache._hash_sources(cache.PACKAGE) != before[0]  # what a process started now would use


def test_a_recorded_refactor_continues_the_version_before_it_until_the_next_edit(sources, monkeypatch):
    """SAME_AS: a change proved to train the same numbers keeps the stages stored before it."""
    from layerwise.store import cache

    monkeypatch.setattr(cache, "SAME_AS", {})
    own = _keys()
    monkeypatch.setattr(cache, "SAME_AS", {cache._hash_sources(cache.PACKAGE): "0123456789ab"})
    continued = _keys()
    assert continued[0] == "0123456789ab" and all(new != old for new, old in zip(continued, own))
    _append_comment(sources / "layerwise" / "train" / "loop.py")
    assert _keys()[0] == cache._hash_sources(cache.PACKAGE) not in ("0123456789ab", own[0])
