import shutil

import pytest
import torch

from conftest import mnist_root
from layerwise.datasets.mnist import MNIST_MD5, load_mnist, verify_mnist
from layerwise.datasets.splits import balanced_order, label_subset
from layerwise.errors import DataError


def _labels(n_per_class=(30, 25, 40), seed=0):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_subset_is_class_balanced():
    y = _labels()
    subset = label_subset(y, 31, seed=3)
    counts = torch.bincount(y[subset], minlength=3).tolist()
    assert sum(counts) == 31 and max(counts) - min(counts) <= 1


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
    y = _labels()
    assert torch.equal(label_subset(y, 12, seed=1), label_subset(y, 12, seed=1))
    assert not torch.equal(label_subset(y, 12, seed=1), label_subset(y, 12, seed=2))


def test_subsets_nest_for_one_seed():
    y = _labels()
    small, large = set(label_subset(y, 9, 4).tolist()), set(label_subset(y, 60, 4).tolist())
    assert small < large


def test_subset_stays_balanced_until_a_class_runs_out():
    y = _labels((5, 20, 20))
    counts = torch.bincount(y[label_subset(y, 35, 0)], minlength=3).tolist()
    assert counts == [5, 15, 15]
    assert len(balanced_order(y, 0).unique()) == len(y)


def test_too_many_labels_is_an_error():
    with pytest.raises(ValueError):
        label_subset(_labels(), 1000, 0)


def test_split_is_deterministic_disjoint_and_subsets_stay_in_train():
    a = load_mnist(mnist_root(), train_size=600, val_size=100, split_seed=7)
    b = load_mnist(mnist_root(), train_size=600, val_size=100, split_seed=7)
    assert a.train_ids == b.train_ids and a.val_ids == b.val_ids
    assert not set(a.train_ids) & set(a.val_ids)
    assert a.x_train.shape == (500, 784) and a.x_val.shape == (100, 784) and a.x_test.shape == (10000, 784)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    chosen = [a.train_ids[i] for i in label_subset(a.y_train, 50, 0).tolist()]
    assert not set(chosen) & set(a.val_ids)


def test_verify_accepts_the_official_files():
    assert len(verify_mnist(mnist_root())) == 12


def test_missing_file_names_where_files_are_expected(tmp_path):
    with pytest.raises(DataError, match=r"MNIST/raw.*missing"):
        verify_mnist(tmp_path)


def test_corrupt_file_is_reported_by_name(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        shutil.copy(mnist_root() / "MNIST" / "raw" / name, raw / name)
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x07")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is corrupt"):
        verify_mnist(tmp_path)
