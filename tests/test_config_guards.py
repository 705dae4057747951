"""Hostile or oversized configs (issue 10, cases 7 and 8): names that would be paths, alias bombs,
huge files, seeds and sizes that would only fail at run time. Each is a ConfigError naming the file,
pipeline and key, refused quickly and before anything runs."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from layerwise.config import (MAX_CONFIG_BYTES, MAX_OVERRIDE_BYTES, SEED_MAX, ConfigError, load_all, load_pipeline,
                              read_pipelines_file)
from layerwise.machine.memory import check_fits, peak
from layerwise.paths import PROJECT_ROOT

BASE = {
    "seed": 0,
    "data": {"train_size": 500, "val_size": 100},
    "layers": [{"size": 16, "epochs": 1, "lr": 0.001}, {"size": 8, "epochs": 1, "lr": 0.001}],
    "finetune": {"labels": 100, "epochs": 1, "lr": 0.1},
}
GIB = 1 << 30


def write(tmp_path: Path, pipelines: dict) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": pipelines}))
    return path


def bomb(levels: int = 9, fan: int = 9, indent: str = "        ") -> str:
    """A billion laughs: list i holds `fan` aliases of list i-1, so the last expands fan**levels-fold."""
    lines = [f"{indent}l0: &l0 [lol]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def bomb_file(tmp_path: Path) -> Path:
    """The issue's case: the bomb under schedule.parameters (~1 KB)."""
    path = tmp_path / "bomb.yaml"
    path.write_text("pipelines:\n  tiny:\n" + textwrap.indent(yaml.safe_dump(BASE), "    ")
                    + "    schedule:\n      cron: '0 2 * * *'\n      parameters:\n" + bomb())
    return path


def timed(call):
    started = time.perf_counter()
    try:
        call()
    except ConfigError as exc:
        return exc, time.perf_counter() - started
    raise AssertionError("no ConfigError")


# ---- case 7: names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "a:b", "..", ".", "a b", "ümlaut", "/abs"])
def test_pipeline_names_outside_the_safe_characters_are_refused(name, tmp_path, capsys):
    path = write(tmp_path, {name: BASE})
    with pytest.raises(ConfigError) as info:
        read_pipelines_file(path)
    assert f"pipeline name {name!r} is not allowed" in str(info.value) and str(path) in str(info.value)
    assert "letters A-Z a-z, digits 0-9, '.', '_' and '-' only" in str(info.value)
    assert main(["validate", "--config", str(path)]) == 2
    assert name in capsys.readouterr().err


def test_safe_names_pass_and_the_shipped_names_too(tmp_path):
    assert set(read_pipelines_file(write(tmp_path, {"ok-name_1.2": BASE, "v1.0": BASE}))) == {"ok-name_1.2", "v1.0"}
    assert {"smoke", "label-ablation", "variant-ablation"} <= set(load_all())


@pytest.mark.parametrize("variant", ["a/b", "..", "a:b"])
def test_variant_names_follow_the_same_rule(variant, tmp_path):
    # a variant names the folder workdir / variant and its runs
    pipeline = {**BASE, "ablation": {"labels": [20], "variants": {variant: {"l1": 0.1}}}}
    with pytest.raises(ConfigError, match=rf"pipeline 'tiny': ablation\.variants: variant name '{variant}' is not"):
        load_pipeline("tiny", write(tmp_path, {"tiny": pipeline}))
    with pytest.raises(ConfigError, match=r"pipeline 'tiny': variant: variant name '\.\.' is not allowed"):
        load_pipeline("tiny", write(tmp_path, {"tiny": BASE}), ["variant=.."])
    ok = {**BASE, "ablation": {"labels": [20], "variants": {"sparse.v2": {"l1": 0.1}}}}
    assert load_pipeline("tiny", write(tmp_path, {"tiny": ok})).ablation.variants == {"sparse.v2": {"l1": 0.1}}


# ---- case 8a/b: size of the YAML ------------------------------------------------------------------

def test_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    path = bomb_file(tmp_path)
    assert path.stat().st_size < 1500
    exc, seconds = timed(lambda: load_all(path))
    print(f"alias bomb ({path.stat().st_size} bytes, 9 levels x 9 aliases) refused in {seconds * 1000:.1f} ms")
    assert str(path) in str(exc) and "more than 100,000 values" in str(exc)
    assert seconds < 5  # < 1 s in practice (~2 ms); generous for a loaded machine


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n"])
def test_an_alias_inside_its_own_value_is_refused(text, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="contains it"):
        read_pipelines_file(path)


def test_deep_nesting_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("pipelines: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_pipelines_file(path)


def test_over_limit_file_is_refused_without_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.write(b"pipelines: [unclosed\n")  # broken YAML: a parse would say so
        file.truncate(50 << 20)               # 50 MB (sparse)
    exc, seconds = timed(lambda: read_pipelines_file(path))
    print(f"50 MB file refused in {seconds * 1000:.1f} ms")
    assert "over 256 KiB" in str(exc) and "broken YAML" not in str(exc)
    assert seconds < 5
    path.write_bytes(b"pipelines: {}\n#" + b"x" * (MAX_CONFIG_BYTES - 16) + b"\n")  # at the limit: parsed
    assert path.stat().st_size == MAX_CONFIG_BYTES and read_pipelines_file(path) == {}


def test_set_value_bomb_is_refused(tmp_path):
    path = write(tmp_path, {"tiny": BASE})
    value = "{" + ", ".join(line.strip() for line in bomb(indent="").splitlines()) + "}"
    exc, seconds = timed(lambda: load_pipeline("tiny", path, [f"schedule.parameters={value}"]))
    print(f"--set bomb ({len(value)} bytes) refused in {seconds * 1000:.1f} ms")
    assert "pipeline 'tiny': --set schedule.parameters" in str(exc) and "more than 100,000 values" in str(exc)
    assert seconds < 5
    with pytest.raises(ConfigError, match=r"--set description: the value is over 64 KiB"):
        load_pipeline("tiny", path, ["description=" + "x" * (MAX_OVERRIDE_BYTES + 1)])


def test_cli_refuses_the_bomb_with_one_line_and_exit_2(tmp_path):
    path = bomb_file(tmp_path)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows", "validate", "--config", str(path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    print(f"`layerwise validate` on the bomb: exit {done.returncode} after {seconds:.1f} s (imports included)")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: {path}: line ") and "more than 100,000 values" in done.stderr
    assert seconds < 60  # interpreter and imports (~2 s here); the refusal itself takes milliseconds


# ---- case 8c: seeds and sizes that would fail at run time ----------------------------------------

@pytest.mark.parametrize("override,key", [("seed=18446744073709551616", "seed"),
                                          ("seed=-1", "seed"),
                                          ("data.split_seed=18446744073709551616", "data.split_seed"),
                                          ("finetune.seed=2147483648", "finetune.seed"),
                                          ("ablation={labels: [20], seeds: [0, 18446744073709551616]}",
                                           "ablation.seeds.1")])
def test_seeds_beyond_what_generators_take_are_refused_naming_the_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"pipeline 'tiny': {key}: Input should be"):
        load_pipeline("tiny", write(tmp_path, {"tiny": BASE}), [override])


def test_the_largest_seed_works_after_the_pretraining_arithmetic(tmp_path):
    cfg = load_pipeline("tiny", write(tmp_path, {"tiny": BASE}), [f"seed={SEED_MAX}", f"finetune.seed={SEED_MAX}"])
    torch.Generator().manual_seed(cfg.seed * 100 + len(cfg.layers))  # tasks/pretrain.py: seed * 100 + index
    torch.manual_seed(cfg.finetune.seed)


def test_a_size_that_cannot_fit_is_refused_naming_the_estimate(tmp_path):
    cfg = load_pipeline("tiny", write(tmp_path, {"tiny": BASE}), ["layers.0.size=3000000"])  # validation passes
    with pytest.raises(ConfigError) as info:
        check_fits(cfg, 24 * GIB, pipeline="tiny", source="pipelines.yaml")
    message = str(info.value)
    print(message)
    assert message.startswith("pipelines.yaml: pipeline 'tiny': layers.0.size=3000000 needs about ")
    assert "weights and optimizer state" in message and "more than the 25.8 GB this machine has" in message


def test_workers_are_named_when_concurrent_cells_do_not_fit():
    cfg = load_pipeline("label-ablation", overrides=["ablation.workers=30"])
    with pytest.raises(ConfigError, match=r"x ablation\.workers=30 needs about .* in fine-tuning \(30 cells at once\)"):
        check_fits(cfg, 8 * GIB, pipeline="label-ablation")


def test_every_shipped_pipeline_fits_a_24_gib_machine_with_room(tmp_path, monkeypatch):
    from flows.checks import check_data
    from layerwise.datasets.examples import write_digits_folder, write_digits_npz

    # the pipelines on other data are estimated on that data (the example data they name)
    write_digits_npz(tmp_path / "data" / "digits.npz")
    write_digits_folder(tmp_path / "data" / "digits-folder")
    monkeypatch.setenv("LAYERWISE_WORKDIR", str(tmp_path / "work"))
    for name, cfg in load_all().items():
        if cfg.data.found is None:  # read as if pipelines.yaml sat beside that data/
            cfg, _ = check_data(name, cfg, tmp_path, False, str(tmp_path / "pipelines.yaml"))
        top = check_fits(cfg, 24 * GIB, pipeline=name)
        print(f"{name:<18} peak about {top.total / 1e9:.1f} GB in {top.name}")
        assert top.total < 12 * GIB, name
    assert peak(load_all()["paper"]).total > 1e9  # the estimate is not vacuous
