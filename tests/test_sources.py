"""The data sources: the same MNIST through every door gives the same split, other data runs, and
every kind of bad data stops `layerwise run` with exit 2 naming what is wrong, before any run."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.io import encode_jpeg, encode_png, write_file

from conftest import mnist_root
from flows.cli import main
from layerwise.config import DataConfig
from layerwise.datasets.splits import split_source
from layerwise.datasets import load_source
from layerwise.errors import DataError

SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _official(n_train: int, n_test: int):
    from torchvision.datasets import MNIST

    train, test = MNIST(str(mnist_root()), train=True), MNIST(str(mnist_root()), train=False)
    return train.data[:n_train], train.targets[:n_train], test.data[:n_test], test.targets[:n_test]


def _png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(str(path), encode_png(image if image.dim() == 3 else image[None]))


def _write_doors(tmp_path: Path, n_train: int = 600, n_test: int = 200) -> tuple[Path, Path]:
    """The official files' first images as an .npz and as a folder of numbered PNGs."""
    x, y, xt, yt = _official(n_train, n_test)
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    for part, images, labels in (("labelled", x, y), ("test", xt, yt)):
        for i, (image, label) in enumerate(zip(images, labels)):
            _png(tmp_path / "folder" / part / str(int(label)) / f"{i:05d}.png", image)
    return npz, tmp_path / "folder"


def _split(cfg: DataConfig, root: Path, cache: Path, train_size=None, val_size=100):
    return split_source(load_source(cfg, root, cache), train_size, val_size, 0)


@pytest.mark.slow  # reads the full MNIST twice
def test_official_files_and_torchvision_give_the_same_split(tmp_path):
    official = _split(DataConfig(), mnist_root(), tmp_path, 2000, 500)
    through_torchvision = _split(DataConfig(source="torchvision", name="MNIST"), mnist_root(), tmp_path, 2000, 500)
    for key in SPLIT_KEYS:
        assert torch.equal(getattr(official, key), getattr(through_torchvision, key)), key
    assert official.train_ids == through_torchvision.train_ids


def test_arrays_and_a_png_folder_give_the_official_images_in_the_same_split(tmp_path):
    npz, folder = _write_doors(tmp_path)
    arrays = _split(DataConfig(source="arrays", path=str(npz)), tmp_path, tmp_path / "cache")
    images = _split(DataConfig(source="folder", path=str(folder), channels=1), tmp_path, tmp_path / "cache")
    for key in SPLIT_KEYS:
        assert torch.equal(getattr(arrays, key), getattr(images, key)), key
    x, y, _, _ = _official(600, 200)
    # identities: an index for arrays, the file for a folder; both name the same official images
    assert torch.equal(arrays.x_train, x[arrays.train_ids].flatten(1).float() / 255)
    assert images.train_ids[0] == f"labelled/{int(y[arrays.train_ids[0]])}/{arrays.train_ids[0]:05d}.png"
    assert arrays.classes == [str(c) for c in range(10)] and images.classes == arrays.classes


def test_a_folder_is_decoded_once_then_read_from_its_cache(tmp_path):
    _, folder = _write_doors(tmp_path, 100, 20)
    cfg = DataConfig(source="folder", path=str(folder))
    first = load_source(cfg, tmp_path, tmp_path / "cache")
    second = load_source(cfg, tmp_path, tmp_path / "cache")
    assert not first.notes and "decode cache" in second.notes[0]
    assert torch.equal(first.train.images, second.train.images) and first.fingerprint == second.fingerprint
    _png(folder / "labelled" / "3" / "99999.png", torch.zeros(28, 28, dtype=torch.uint8))  # new content: new key
    third = load_source(cfg, tmp_path, tmp_path / "cache")
    assert not third.notes and third.fingerprint != first.fingerprint and len(third.train) == 101


def test_an_unlabelled_pool_joins_pretraining_only(tmp_path):
    x, y, xt, yt = _official(300, 50)
    y = y.clone()
    y[200:] = -1  # the last 100 training images lose their labels
    npz = tmp_path / "pool.npz"
    np.savez(npz, x_train=x.numpy(), y_train=y.numpy(), x_unlabelled=x[:30].numpy(), x_test=xt.numpy(),
             y_test=yt.numpy())
    source = load_source(DataConfig(source="arrays", path=str(npz)), tmp_path, tmp_path)
    assert source.sizes() == {"labelled_images": 200, "unlabelled_images": 130, "test_images": 50}
    split = split_source(source, None, 0.25, 0)
    assert len(split.x_val) == 50 and split.n_labelled == 150 and len(split.x_train) == 150 + 130
    assert max(split.train_ids) < 200 and not set(split.train_ids) & set(split.val_ids)  # labelled only


def test_rgb_images_are_resized_and_a_held_out_test_split_is_class_balanced(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(10):
            image = torch.randint(0, 255, (3, 12 + i % 3, 10), dtype=torch.uint8, generator=gen)
            path = tmp_path / "pets" / "labelled" / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(str(path), encode_jpeg(image))
    source = load_source(DataConfig(source="folder", path=str(tmp_path / "pets"), image_size=[8, 8], test_fraction=0.3),
                         tmp_path, tmp_path / "cache")
    assert source.shape == (3, 8, 8) and source.classes == ["cat", "dog", "fox"]
    assert source.test.labels.bincount().tolist() == [3, 3, 3] and len(source.train) == 21
    assert "held out" in source.notes[0]


def _bad_folder(tmp_path: Path, case: str) -> dict:
    root = tmp_path / "images"
    digit = torch.full((28, 28), 200, dtype=torch.uint8)
    if case != "missing folder":
        for label in ("a", "b"):
            for i in range(4):
                _png(root / "labelled" / label / f"{i}.png", digit)
    if case == "empty class folder":
        (root / "labelled" / "c").mkdir()
    elif case == "single class":
        import shutil

        shutil.rmtree(root / "labelled" / "b")
    elif case == "truncated image":
        data = (root / "labelled" / "b" / "2.png").read_bytes()
        (root / "labelled" / "b" / "2.png").write_bytes(data[: len(data) // 2])
    elif case == "different sizes":
        _png(root / "labelled" / "b" / "9.png", torch.zeros(20, 20, dtype=torch.uint8))
    return {"source": "folder", "path": str(root)}


def _bad_arrays(tmp_path: Path, case: str) -> dict:
    x = np.full((40, 8, 8), 100, dtype=np.uint8)
    y = np.arange(40) % 4
    arrays = {"x_train": x, "y_train": y}
    if case == "non-integer labels":
        arrays["y_train"] = y + 0.5
    elif case == "x and y lengths differ":
        arrays["y_train"] = y[:30]
    elif case == "NaN values":
        arrays["x_train"] = np.full((40, 8, 8), np.nan, dtype=np.float32)
    elif case == "out-of-range values":
        arrays["x_train"] = np.full((40, 8, 8), 3.0, dtype=np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return {"source": "arrays", "path": str(path)}


BAD = {  # case: (data block builder, what the message must name)
    "missing folder": (_bad_folder, r"images: no such folder"),
    "empty class folder": (_bad_folder, r"labelled/c: an empty class folder"),
    "single class": (_bad_folder, r"a single class \(a\)"),
    "truncated image": (_bad_folder, r"labelled/b/2\.png in .*: unreadable or truncated image"),
    "different sizes": (_bad_folder, r"images differ in size .*labelled/b/9\.png is \(20, 20\).*data\.image_size"),
    "non-integer labels": (_bad_arrays, r"bad\.npz: y_train holds non-integer labels"),
    "x and y lengths differ": (_bad_arrays, r"y_train has 30 labels but its images are 40"),
    "NaN values": (_bad_arrays, r"x_train holds NaN or infinite values"),
    "out-of-range values": (_bad_arrays, r"x_train has float values outside \[0, 1\]"),
    "unknown torchvision name": (lambda t, c: {"source": "torchvision", "name": "NoSuchSet"},
                                 r"data\.name: unknown torchvision dataset 'NoSuchSet'"),
    "not a classification dataset": (lambda t, c: {"source": "torchvision", "name": "CocoDetection"},
                                     r"data\.name: torchvision's CocoDetection is not an image classification"),
    "torchvision files absent offline": (lambda t, c: {"source": "torchvision", "name": "FashionMNIST"},
                                         r"FashionMNIST is not in .*FashionMNIST/raw: train-images-idx3-ubyte"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_exits_2_naming_it_before_any_run(case, tmp_path, capsys, monkeypatch):
    build, pattern = BAD[case]
    data = build(tmp_path, case)
    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump({"pipelines": {"mine": {
        "data": {**data, "val_size": 0.25},
        "layers": [{"size": 16, "epochs": 1, "lr": 0.01}],
        "finetune": {"labels": 4, "epochs": 1, "lr": 0.1}}}}))
    store = tmp_path / "mlruns" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("LAYERWISE_WORKDIR", str(tmp_path / "work"))
    assert main(["run", "mine", "--config", str(config), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(pattern, err), err
    assert "Traceback" not in err and not store.exists()  # nothing trained, no MLflow run (not even a store)


def test_a_bad_data_block_is_a_config_error():
    from pydantic import ValidationError

    for block, message in (({"source": "folder"}, "needs data.path"),
                           ({"source": "arrays", "path": "x.npz", "channels": 3}, "data.channels is not used"),
                           ({"source": "mnist", "name": "MNIST"}, "data.name is not used")):
        with pytest.raises(ValidationError, match=message):
            DataConfig.model_validate(block)
    with pytest.raises(DataError, match="x.npz: no such file"):
        load_source(DataConfig(source="arrays", path="x.npz"), Path("/nonexistent"), Path("/tmp"))


def test_pixels_kept_as_uint8_train_exactly_as_floats(tmp_path, monkeypatch):
    """Large data stays uint8 in memory and is scaled per batch: the same numbers as the float copy."""
    from layerwise.config import FinetuneConfig, LayerConfig, resolve_layers
    from layerwise.datasets.splits import Labelled
    from layerwise.train.finetune import finetune
    from layerwise.train.stack import pretrain_stack
    from layerwise.train.evaluate import accuracy

    npz, _ = _write_doors(tmp_path, 300, 100)
    layers = [LayerConfig(input=784, size=32, epochs=2, lr=0.003, optimizer="adam", l1=0.01),
              LayerConfig(input=32, size=16, epochs=1, lr=0.003, optimizer="adam")]
    resolve_layers(layers, (1, 28, 28))
    results = {}
    for pixels in ("float", "uint8"):
        monkeypatch.setenv("LAYERWISE_PIXELS", pixels)
        split = _split(DataConfig(source="arrays", path=str(npz)), tmp_path, tmp_path, None, 60)
        assert split.x_train.dtype == (torch.uint8 if pixels == "uint8" else torch.float32)
        inputs = {"train": split.x_train, "val": split.x_val, "test": split.x_test}
        stack = pretrain_stack(layers, inputs, seed=0)
        labelled = Labelled(split.x_train[:100], split.y_train[:100], split.x_val, split.y_val)
        tuned = finetune(stack.encoders, labelled, FinetuneConfig(epochs=2, lr=0.1, batch_size=16), layers)
        results[pixels] = ([s.result.history[-1].metrics for s in stack.stages], stack.codes["test"],
                           accuracy(tuned.model, split.x_test, split.y_test))
    assert results["float"][0] == results["uint8"][0]
    assert torch.equal(results["float"][1], results["uint8"][1]) and results["float"][2] == results["uint8"][2]


def test_rgb_arrays_set_the_conv_channels_and_the_classes(tmp_path):
    """The layers follow the data: a conv layer on 3x16x16 images takes 3 channels, the output layer
    has one unit per class, and a label count the data cannot hold names the key."""
    from flows.checks import check_data
    from layerwise.config import PipelineConfig
    from layerwise.train.finetune import build_classifier

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x_train=rng.integers(0, 255, (120, 16, 16, 3), dtype=np.uint8),
             y_train=np.arange(120) % 3)
    raw = {"data": {"source": "arrays", "path": "rgb.npz", "val_size": 0.2},
           "layers": [{"kind": "conv", "channels": 4, "kernel": 3, "pool": 2, "epochs": 1, "lr": 0.01},
                      {"size": 8, "epochs": 1, "lr": 0.01}],
           "finetune": {"init": "scratch", "labels": 30, "epochs": 1, "lr": 0.1}}
    given = PipelineConfig.model_validate(raw)
    cfg, _ = check_data("rgb", given, tmp_path, False, str(tmp_path / "p.yaml"))
    assert given.data.path == "rgb.npz" and cfg.data.path == str(tmp_path / "rgb.npz")  # a new config
    assert cfg.data.found.shape == [3, 16, 16] and cfg.data.found.classes == ["0", "1", "2"]
    assert cfg.layers[0].input_shape == [3, 16, 16] and cfg.sizes == [768, 4 * 8 * 8, 8]
    model = build_classifier(None, cfg.finetune, cfg.layers, cfg.data.n_classes)
    assert model.hidden[0][0].in_channels == 3 and model.output.out_features == 3
    with pytest.raises(ValueError, match="finetune.labels is 90 but must lie between 3"):
        cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"labels": 90})}).bound_to(cfg.data.found)


def test_the_checks_read_is_the_runs_read_and_is_handed_out_once(tmp_path):
    """check_data decodes the images to bind the config; the run's prepare-data step gets that very
    read (not a second decode), and only once: the next load reads the file again."""
    from flows.checks import check_data
    from layerwise.config import PipelineConfig

    npz, _ = _write_doors(tmp_path, 60, 20)
    raw = {"data": {"source": "arrays", "path": str(npz), "val_size": 10},
           "layers": [{"size": 8, "epochs": 1, "lr": 0.01}],
           "finetune": {"init": "scratch", "epochs": 1, "lr": 0.1}}
    cfg, _ = check_data("p", PipelineConfig.model_validate(raw), tmp_path, False, str(tmp_path / "p.yaml"))
    x, y, xt, yt = _official(60, 20)
    np.savez(npz, x_train=255 - x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    handed = load_source(cfg.data, tmp_path, tmp_path / "cache")
    assert torch.equal(handed.train.images[:, 0], x)  # the checked read, not the changed file
    assert torch.equal(load_source(cfg.data, tmp_path, tmp_path / "cache").train.images[:, 0], 255 - x)


def test_mnist_files_are_hashed_once_per_process_unless_they_change(tmp_path, monkeypatch):
    import shutil

    import layerwise.datasets.mnist as data

    raw = data.raw_dir(tmp_path)
    shutil.copytree(data.raw_dir(mnist_root()), raw)
    hashed = []
    monkeypatch.setattr(data, "_md5", lambda path, real=data._md5: hashed.append(path.name) or real(path))
    data.verify_mnist(tmp_path)
    data.verify_mnist(tmp_path)
    assert sorted(hashed) == sorted(data.MNIST_MD5)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x00")  # same size, new mtime, wrong content
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is corrupt"):
        data.verify_mnist(tmp_path)
