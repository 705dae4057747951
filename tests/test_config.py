"""Every bad-config case: one clear message naming the pipeline and the key, exit 2, and no MLflow run."""
import copy
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from layerwise.config import ConfigError, load_all, load_pipeline

BASE = {
    "seed": 0,
    "data": {"train_size": 500, "val_size": 100},
    "layers": [
        {"input": 784, "size": 16, "epochs": 1, "lr": 0.001},
        {"input": 16, "size": 8, "epochs": 1, "lr": 0.001},
    ],
    "finetune": {"labels": 100, "epochs": 1, "lr": 0.1},
}


def write(tmp_path: Path, pipeline: dict, name: str = "tiny") -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": {name: pipeline}}))
    return path


def mutate(edit) -> dict:
    pipeline = copy.deepcopy(BASE)
    edit(pipeline)
    return pipeline


def test_the_shipped_file_is_valid():
    pipelines = load_all()
    assert {"smoke", "quickstart", "paper"} <= set(pipelines)


def test_defaults_are_resolved():
    cfg = load_pipeline("tiny", write(Path(__import__("tempfile").mkdtemp()), BASE))
    assert [layer.loss for layer in cfg.layers] == ["bce", "bce"]  # pixels, then sigmoid codes
    assert cfg.layers[0].activation == "sigmoid" and cfg.n_labels() == 100


BAD = {
    "unknown layer key": (lambda p: p["layers"][1].update(sise=3), r"layers\.1\.sise: unknown key \(allowed: kind, input, size"),
    "unknown finetune key": (lambda p: p["finetune"].update(lables=5), r"finetune\.lables: unknown key"),
    "unknown pipeline key": (lambda p: p.update(epochs=3), r"'tiny': epochs: unknown key"),
    "wrong type": (lambda p: p["layers"][0].update(epochs="three"), r"layers\.0\.epochs: .*integer"),
    "wrong activation": (lambda p: p["layers"][0].update(activation="softplus"), r"layers\.0\.activation"),
    "input mismatch": (lambda p: p["layers"][1].update(input=32), r"layers\.1\.input is 32 but layers\.0\.size is 16"),
    "first input not 784": (lambda p: p["layers"][0].update(input=100), r"layers\.0\.input is 100 but the images. C x H x W \(1x28x28\) is 784"),
    "labels above what exists": (lambda p: p["finetune"].update(labels=401), r"finetune\.labels is 401 but must lie between 10 \(one per class\) and 400"),
    "fraction zero": (lambda p: p["finetune"].update(labels=None, label_fraction=0), r"finetune\.label_fraction: .*greater than 0"),
    "fraction above one": (lambda p: p["finetune"].update(labels=None, label_fraction=1.5), r"finetune\.label_fraction: .*less than or equal to 1"),
    "labels and fraction": (lambda p: p["finetune"].update(label_fraction=0.5), r"finetune: give either labels or label_fraction"),
    "missing key": (lambda p: p.pop("layers"), r"layers: required key is missing"),
    "val larger than pool": (lambda p: p["data"].update(val_size=600), r"data: val_size \(600\) must be smaller"),
    "bad cron": (lambda p: p.update(schedule={"cron": "0 2 * *"}), r"schedule\.cron: Invalid cron string"),
    "bad timezone": (lambda p: p.update(schedule={"cron": "0 2 * * *", "timezone": "Mars/Base"}),
                     r"schedule\.timezone: Invalid timezone"),
    "unknown schedule key": (lambda p: p.update(schedule={"cron": "0 2 * * *", "every": 3}),
                             r"schedule\.every: unknown key \(allowed: cron, timezone, parameters, concurrency_limit\)"),
    "concurrency below one": (lambda p: p.update(schedule={"cron": "0 2 * * *", "concurrency_limit": 0}),
                              r"schedule\.concurrency_limit: .*greater than or equal to 1"),
    "bad scheduled override": (lambda p: p.update(schedule={"cron": "0 2 * * *", "parameters": {"finetune.labels": 9999}}),
                               r"'tiny' schedule\.parameters: finetune\.labels is 9999"),
    "finetune and unroll": (lambda p: p.update(unroll={"epochs": 1, "lr": 0.001}), r"give finetune .* or unroll"),
    "neither finetune nor unroll": (lambda p: p.pop("finetune"), r"give finetune .* or unroll"),
    "unknown unroll key": (lambda p: (p.pop("finetune"), p.update(unroll={"epochs": 1, "lr": 0.1, "epoch": 2})),
                           r"unroll\.epoch: unknown key"),
    "unknown variant key": (lambda p: p.update(ablation={"labels": [20], "variants": {"cae": {"contractiv": 0.1}}}),
                            r"ablation\.variants\.cae on layers\.0: contractiv: unknown key"),
    "bad variant value": (lambda p: p.update(ablation={"labels": [20], "variants": {"cae": {"contractive": -1}}}),
                          r"ablation\.variants\.cae on layers\.0: contractive: .*greater than or equal to 0"),
    "variant named scratch": (lambda p: p.update(ablation={"labels": [20], "variants": {"scratch": {"l1": 0.1}}}),
                              r"variant name 'scratch'"),
    "conv after dense": (lambda p: p["layers"][1].update(kind="conv", channels=4, size=None, input=None),
                         r"layers\.1 is a conv layer on the flat codes"),
    "retrieval k zero": (lambda p: p.update(retrieval={"k": 0}), r"retrieval\.k: .*greater than or equal to 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_naming_pipeline_and_key(case, tmp_path, tracking, capsys):
    edit, pattern = BAD[case]
    path = write(tmp_path, mutate(edit))
    assert main(["run", "tiny", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'tiny'" in err
    assert __import__("re").search(pattern, err), err
    assert not (tmp_path / "mlruns").exists()  # no MLflow store touched, let alone a run
    assert main(["validate", "--config", str(path)]) == 2


def test_missing_pipeline_name(tmp_path, tracking, capsys):
    assert main(["run", "nope", "--config", str(write(tmp_path, BASE))]) == 2
    assert "no pipeline named 'nope' (defined: tiny)" in capsys.readouterr().err


def test_broken_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "pipelines.yaml"
    path.write_text("pipelines:\n  tiny:\n    seed: [1, 2\n")
    assert main(["validate", "--config", str(path)]) == 2
    assert "broken YAML" in capsys.readouterr().err


def test_set_overrides_are_applied_and_validated(tmp_path, tracking, capsys):
    path = write(tmp_path, BASE)
    cfg = load_pipeline("tiny", path, ["finetune.init=scratch", "layers.1.l1=0.5", "finetune.labels=all"])
    assert cfg.finetune.init == "scratch" and cfg.layers[1].l1 == 0.5 and cfg.n_labels() == 400
    for override, pattern in [("finetune.lr=abc", r"finetune\.lr: .*number"),
                              ("finetune.colour=red", r"finetune\.colour: unknown key"),
                              ("layers.5.size=3", r"'5' is not an index of a list of 2"),
                              ("finetune.labels=100000", r"finetune\.labels is 100000"),
                              ("finetune.labels=5", r"finetune\.labels is 5 but must lie between 10"),
                              ("noequals", r"expects dotted\.key=value")]:
        assert main(["run", "tiny", "--config", str(path), "--set", override]) == 2
        err = capsys.readouterr().err
        assert "pipeline 'tiny'" in err and __import__("re").search(pattern, err), (override, err)
    assert not (tmp_path / "mlruns").exists()


def test_missing_data_exits_2_with_the_expected_location(tmp_path, tracking, capsys):
    path = write(tmp_path, BASE)
    assert main(["run", "tiny", "--config", str(path), "--data-root", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nodata" / "MNIST" / "raw") in err and "missing" in err
    assert not (tmp_path / "mlruns").exists()


def test_list_shows_every_pipeline(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "784-1000-1000-500" in out


def test_scratch_block_sets_what_the_control_trains_with(tmp_path):
    pipeline = mutate(lambda p: p["finetune"].update(scratch={"optimizer": "adam", "lr": 0.001}))
    path = write(tmp_path, pipeline)
    pretrained = load_pipeline("tiny", path).finetune.in_force()
    assert (pretrained.optimizer, pretrained.lr) == ("sgd", 0.1)
    control = load_pipeline("tiny", path, ["finetune.init=scratch"]).finetune.in_force()
    assert (control.optimizer, control.lr, control.epochs) == ("adam", 0.001, 1)


def test_scratch_block_is_validated_like_the_rest(tmp_path, capsys):
    path = write(tmp_path, mutate(lambda p: p["finetune"].update(scratch={"lrr": 1, "lr": -1})))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "finetune.scratch.lrr: unknown key (allowed: epochs, optimizer, lr" in err
    assert "finetune.scratch.lr: Input should be greater than 0" in err


def test_schedule_parameters_become_set_overrides(tmp_path):
    pipeline = mutate(lambda p: p.update(schedule={"cron": "0 2 * * 1", "timezone": "Europe/Berlin",
                                                   "parameters": {"finetune.labels": 50, "layers.0.l1": 0.1}}))
    cfg = load_pipeline("tiny", write(tmp_path, pipeline))
    assert cfg.schedule.concurrency_limit == 1
    assert cfg.schedule.overrides() == ["finetune.labels=50", "layers.0.l1=0.1"]
    scheduled = load_pipeline("tiny", write(tmp_path, pipeline), cfg.schedule.overrides())
    assert scheduled.n_labels() == 50 and scheduled.layers[0].l1 == 0.1
