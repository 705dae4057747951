import pytest
import torch

from layerwise.config import Denoising, FinetuneConfig, LayerConfig, TrainingConfig, resolve_layers
from layerwise.datasets.splits import Labelled
from layerwise.train.evaluate import encode
from layerwise.train.stack import pretrain_stack, pretrain_stage
from layerwise.nn.models import Autoencoder
from layerwise.train.autoencoder import train_autoencoder
from layerwise.train.classifier import train_classifier
from layerwise.nn.transfer import classifier_from_encoders, freeze, scratch_classifier


def _dense(n_in, n_out, activation):
    """A dense layer's shape, for building classifiers (epochs and lr are required, and unused here)."""
    return LayerConfig(input=n_in, size=n_out, activation=activation, epochs=1, lr=0.1)


def _training(**settings):
    """Classifier training settings; schedule constant unless given."""
    return TrainingConfig(**{"schedule": "constant", **settings})


def _layers(sizes, epochs=2):
    layers = [LayerConfig(size=n_out, activation="sigmoid", epochs=epochs, batch_size=8, optimizer="adam", lr=1e-2,
                          l1=0.01) for n_out in sizes[1:]]
    resolve_layers(layers, (sizes[0],))
    return layers


def _stack(x, sizes, epochs=2):
    """Greedy pretraining on tiny data through the library's loop: the frozen encoders and a
    snapshot of each taken right after its stage trained (before the stages above it)."""
    snapshots = []

    def stage(layer, inputs, seed, index, callback):
        trained = pretrain_stage(layer, inputs, seed, index, callback)
        snapshots.append({k: v.clone() for k, v in trained.encoder.state_dict().items()})
        return trained

    stack = pretrain_stack(_layers(sizes, epochs), {"train": x, "val": x[:8]}, stage=stage)
    return stack.encoders, snapshots


def test_frozen_encoder_is_bit_identical_after_later_stages_train():
    torch.manual_seed(0)
    x = torch.rand(32, 12)
    encoders, snapshots = _stack(x, [12, 10, 6, 4])
    for encoder, snapshot in zip(encoders, snapshots):
        assert all(not p.requires_grad for p in encoder.parameters())
        for key, value in encoder.state_dict().items():
            assert torch.equal(value, snapshot[key]), key


def test_classifier_starts_as_the_encoders_and_finetuning_leaves_them_alone():
    torch.manual_seed(0)
    x, y = torch.rand(40, 12), torch.randint(0, 3, (40,))
    encoders, snapshots = _stack(x, [12, 10, 6], epochs=1)
    clf = classifier_from_encoders(encoders, n_classes=3, dropout=0.0, seed=1)
    for block, encoder in zip(clf.hidden, encoders):
        assert torch.equal(block[0].weight, encoder[0].weight)
        assert torch.equal(block[0].bias, encoder[0].bias)
        assert block[0].weight.data_ptr() != encoder[0].weight.data_ptr()  # a copy, not an alias
        assert type(block[1]) is type(encoder[1])
        assert all(p.requires_grad for p in block.parameters())
    assert clf.output.weight.shape == (3, 6)
    train_classifier(clf, Labelled(x, y, x, y), _training(epochs=2, batch_size=8, optimizer="sgd", lr=0.5), seed=0)
    assert not torch.equal(clf.hidden[0][0].weight, encoders[0][0].weight)  # fine-tuning moved the copy
    for encoder, snapshot in zip(encoders, snapshots):
        assert torch.equal(encoder[0].weight, snapshot["0.weight"])  # ...and not the encoder


def test_scratch_classifier_has_the_same_shape_and_is_seeded():
    a = scratch_classifier([_dense(12, 10, "sigmoid"), _dense(10, 6, "relu")], 3, 0.0, seed=5)
    b = scratch_classifier([_dense(12, 10, "sigmoid"), _dense(10, 6, "relu")], 3, 0.0, seed=5)
    assert [tuple(p.shape) for p in a.parameters()] == [(10, 12), (10,), (6, 10), (6,), (3, 6), (3,)]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert isinstance(a.hidden[1][1], torch.nn.ReLU)


def test_code_shapes_through_the_stack():
    x = torch.rand(20, 12)
    encoders, _ = _stack(x, [12, 10, 6], epochs=1)
    codes = encode(encoders[0], x)
    assert codes.shape == (20, 10)
    assert encode(encoders[1], codes).shape == (20, 6)
    assert ((codes >= 0) & (codes <= 1)).all()  # sigmoid codes


def test_keep_last_keeps_the_final_weights_and_best_val_restores_the_best():
    torch.manual_seed(0)
    x, y = torch.rand(40, 12), torch.randint(0, 3, (40,))
    clf = scratch_classifier([_dense(12, 8, "relu")], 3, 0.0, seed=0)
    seen = []
    result = train_classifier(clf, Labelled(x, y, x, y),
                              _training(epochs=4, batch_size=8, optimizer="sgd", lr=0.5, keep="last"), seed=0,
                              callback=lambda r: seen.append(r.metrics["val_accuracy"]))
    assert result.best_epoch == 4 and len(seen) == 4
    from layerwise.train.evaluate import accuracy

    assert accuracy(clf, x, y) == seen[-1]
    best = scratch_classifier([_dense(12, 8, "relu")], 3, 0.0, seed=0)
    result = train_classifier(best, Labelled(x, y, x, y), _training(epochs=4, batch_size=8, optimizer="sgd", lr=0.5),
                              seed=0)
    assert accuracy(best, x, y) == max(seen) and seen[result.best_epoch - 1] == max(seen)


def test_a_seeded_stage_reproduces_bit_for_bit():
    from layerwise.nn.models import seeded_autoencoder

    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(0))
    weights = []
    for _ in range(2):
        torch.manual_seed(12345 + len(weights))  # whatever the global RNG held before
        ae = seeded_autoencoder(12, 8, "sigmoid", "bce", seed=3)
        layer = LayerConfig(input=12, size=8, loss="bce", epochs=2, batch_size=16, optimizer="adam", lr=1e-2,
                            l1=0.01, denoising=Denoising(kind="mask", level=0.2))
        train_autoencoder(ae, x, x[:8], layer, seed=3)
        weights.append(ae.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_head_epochs_train_the_output_layer_alone_first():
    torch.manual_seed(0)
    x, y = torch.rand(40, 12), torch.randint(0, 3, (40,))
    clf = scratch_classifier([_dense(12, 8, "sigmoid")], 3, 0.0, seed=0)
    hidden_before = clf.hidden[0][0].weight.clone()
    output_before = clf.output.weight.clone()
    # no epochs through every layer: the schema asks for one at least, the loop takes none
    head_only = _training(epochs=1, head_epochs=3, batch_size=8, optimizer="sgd", lr=0.5).model_copy(
        update={"epochs": 0})
    train_classifier(clf, Labelled(x, y, x, y), head_only, seed=0)
    assert torch.equal(clf.hidden[0][0].weight, hidden_before)
    assert not torch.equal(clf.output.weight, output_before)
    assert all(p.requires_grad for p in clf.parameters())  # unfrozen again afterwards
    train_classifier(clf, Labelled(x, y, x, y), _training(epochs=1, batch_size=8, optimizer="sgd", lr=0.5), seed=0)
    assert not torch.equal(clf.hidden[0][0].weight, hidden_before)


def test_hidden_layers_learn_at_a_scaled_rate():
    from layerwise.train.optim import classifier_optimizer

    clf = scratch_classifier([_dense(12, 8, "sigmoid"), _dense(8, 6, "sigmoid")], 3, 0.0, seed=0)
    opt = classifier_optimizer(clf, _training(epochs=1, optimizer="sgd", lr=0.2, hidden_lr_scale=0.1))
    hidden, output = opt.param_groups
    assert hidden["lr"] == pytest.approx(0.02) and output["lr"] == 0.2
    assert len(hidden["params"]) == 4 and len(output["params"]) == 2


def test_max_norm_scales_back_only_the_rows_past_the_limit():
    from layerwise.train.optim import max_norm_

    clf = scratch_classifier([_dense(4, 3, "sigmoid")], 2, 0.0, seed=0)
    rows = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0], [0.0, 0.0, 0.0, 10.0]])  # norms 5, 0.5, 10
    with torch.no_grad():
        clf.hidden[0][0].weight.copy_(rows)
        clf.output.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.2, 0.2]]))  # norms sqrt(3), 0.3
    max_norm_(clf, 1.0)
    expected = [[0.6, 0.8, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0], [0.0, 0.0, 0.0, 1.0]]  # same directions, norm <= 1
    assert torch.allclose(clf.hidden[0][0].weight, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(clf.output.weight[0], torch.full((3,), 3 ** -0.5), atol=1e-6)
    assert torch.equal(clf.output.weight[1], torch.tensor([0.1, 0.2, 0.2]))


def test_a_max_norm_fine_tune_keeps_every_unit_within_it_and_a_plain_one_does_not():
    torch.manual_seed(0)
    x, y = torch.rand(64, 12), torch.randint(0, 3, (64,))
    norms = {}
    for limit in (0.0, 0.5):
        clf = scratch_classifier([_dense(12, 8, "sigmoid")], 3, 0.0, seed=0)
        train_classifier(clf, Labelled(x, y, x, y), _training(epochs=5, batch_size=8, optimizer="sgd", lr=2.0,
                                                              max_norm=limit), seed=0)
        norms[limit] = max(m.weight.norm(dim=1).max().item() for m in (clf.hidden[0][0], clf.output))
    assert norms[0.5] <= 0.5 + 1e-5 < norms[0.0]


def test_a_fine_tune_does_not_depend_on_what_runs_beside_it():
    """Ablation cells run as threads of one process: each must draw only from its own generators."""
    import threading

    torch.manual_seed(0)
    x, y = torch.rand(96, 12), torch.randint(0, 3, (96,))

    def cell(seed, out):
        clf = scratch_classifier([_dense(12, 8, "sigmoid")], 3, 0.5, seed=seed, input_dropout=0.2)
        train_classifier(clf, Labelled(x, y, x[:16], y[:16]),
                         _training(epochs=8, batch_size=8, optimizer="sgd", lr=0.1, keep="last"), seed=seed)
        out[seed] = clf.state_dict()

    alone = {}
    for seed in (1, 2):
        torch.manual_seed(100 + seed)  # the global RNG's state must not matter either
        cell(seed, alone)
    side_by_side = {}
    threads = [threading.Thread(target=cell, args=(seed, side_by_side)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in (1, 2):
        assert all(torch.equal(alone[seed][k], side_by_side[seed][k]) for k in alone[seed])
    assert not torch.equal(alone[1]["output.weight"], alone[2]["output.weight"])


def test_the_output_layer_is_drawn_from_the_seed_alone():
    encoders = [freeze(Autoencoder(12, 8, "sigmoid", "bce").encoder)]
    torch.manual_seed(1)
    a = classifier_from_encoders(encoders, 3, 0.0, seed=4)
    torch.manual_seed(2)
    b = classifier_from_encoders(encoders, 3, 0.0, seed=4)
    assert torch.equal(a.output.weight, b.output.weight) and torch.equal(a.output.bias, b.output.bias)


def test_a_scratch_controls_settings_in_force_are_its_overrides_applied_once():
    torch.manual_seed(0)
    x, y = torch.rand(40, 12), torch.randint(0, 3, (40,))
    config = FinetuneConfig(init="scratch", epochs=2, batch_size=8, optimizer="sgd", lr=0.5, schedule="constant",
                            min_steps=15, scratch={"optimizer": "adam", "lr": 0.01})
    explicit = FinetuneConfig(init="scratch", epochs=2, batch_size=8, optimizer="adam", lr=0.01, schedule="constant",
                              min_steps=15)
    assert config.in_force() == explicit and config.in_force().in_force() == explicit  # nothing left to apply
    weights = []
    for settings in (explicit, config.in_force()):
        clf = scratch_classifier([_dense(12, 8, "sigmoid")], 3, 0.0, seed=0)
        result = train_classifier(clf, Labelled(x, y, x, y), settings, seed=0)
        assert len(result.history) == 3  # min_steps 15 at 5 batches an epoch: 3 epochs, not 2
        weights.append(clf.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
