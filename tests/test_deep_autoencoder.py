"""The unrolled deep autoencoder, PCA and nearest-neighbour retrieval, on tiny tensors."""
import pytest
import torch

from layerwise.config import UnrollConfig
from layerwise.nn.models import DeepAutoencoder, seeded_autoencoder
from layerwise.nn.pca import fit_pca
from layerwise.report.retrieval import nearest, precision_at_k
from layerwise.train.evaluate import squared_error
from layerwise.train.unroll import train_unrolled


def _stages():
    return [seeded_autoencoder(12, 6, "sigmoid", "bce", seed=0), seeded_autoencoder(6, 2, "linear", "bce", seed=1)]


def test_unrolled_is_the_encoders_then_the_decoders_in_reverse():
    first, second = _stages()
    deep = DeepAutoencoder([first, second])
    x = torch.rand(5, 12)
    h1 = first.encoder(x)
    code = second.encoder(h1)
    expected = first.decoder(torch.sigmoid(second.decoder(code)))  # the rebuilt h1 is a sigmoid code
    got_code, logits = deep(x)
    assert torch.equal(got_code, code) and torch.allclose(logits, expected)
    assert torch.allclose(deep.reconstruct(x), torch.sigmoid(expected))
    assert deep.encoders[0] is first.encoder and deep.decoders[0] is second.decoder


def test_squared_error_is_summed_over_pixels_and_averaged_over_images():
    deep = DeepAutoencoder(_stages())
    x = torch.rand(7, 12)
    assert squared_error(deep, x, batch_size=3) == pytest.approx(
        (deep.reconstruct(x) - x).pow(2).sum(dim=1).mean().item(), rel=1e-5)


def test_unrolled_fine_tuning_lowers_the_reconstruction_error():
    torch.manual_seed(0)
    x = torch.rand(256, 2) @ torch.rand(2, 12)
    x = (x / x.max()).clamp(0, 1)
    deep = DeepAutoencoder(_stages())
    before = squared_error(deep, x)
    config = UnrollConfig(epochs=30, batch_size=32, optimizer="adam", lr=0.01, l2=0.001)
    result = train_unrolled(deep, x, x[:32], config)
    assert squared_error(deep, x) < 0.5 * before
    assert [r.metrics.keys() for r in result.history][0] == {"recon_loss", "val_sq_error"}


def test_unrolled_fine_tuning_runs_without_validation_images():
    # data.val_size 0 (a sweep's final run retrained on every training image): no validation metric
    torch.manual_seed(0)
    x = (torch.rand(64, 2) @ torch.rand(2, 12)).clamp(0, 1)
    config = UnrollConfig(epochs=2, batch_size=16, optimizer="adam", lr=0.01)
    result = train_unrolled(DeepAutoencoder(_stages()), x, x[:0], config)
    assert [r.metrics.keys() for r in result.history] == [{"recon_loss"}] * 2


def test_unroll_trains_copies_of_the_stages_as_train_unrolled_does():
    from layerwise.nn.transfer import freeze
    from layerwise.train.unroll import unroll

    torch.manual_seed(0)
    x = (torch.rand(64, 2) @ torch.rand(2, 12)).clamp(0, 1)
    config = UnrollConfig(epochs=3, batch_size=16, lr=0.01, l2=0.001)
    stages = _stages()
    for stage in stages:
        freeze(stage.encoder)  # as a pretrained stack holds them
    before = [{k: v.clone() for k, v in stage.state_dict().items()} for stage in stages]
    unrolled = unroll(stages, {"train": x, "val": x[:16], "test": x[16:]}, config, seed=4)
    for stage, state in zip(stages, before):  # the stages are left alone, frozen as they were
        assert all(torch.equal(v, stage.state_dict()[k]) for k, v in state.items())
        assert not any(p.requires_grad for p in stage.encoder.parameters())
    direct = DeepAutoencoder(_stages())
    stacked = squared_error(direct, x[16:])
    result = train_unrolled(direct, x, x[:16], config, seed=4)
    assert all(torch.equal(v, unrolled.model.state_dict()[k]) for k, v in direct.state_dict().items())
    assert [r.metrics for r in unrolled.result.history] == [r.metrics for r in result.history]
    assert unrolled.test_sq_error_stacked == stacked and unrolled.test_sq_error == squared_error(direct, x[16:])
    assert unrolled.test_sq_error < unrolled.test_sq_error_stacked
    assert unroll(_stages(), {"train": x, "val": x[:16]}, config).test_sq_error is None
    with pytest.raises(ValueError, match="dense stages"):
        from layerwise.nn.models import ConvAutoencoder

        unroll([ConvAutoencoder((1, 4, 4), 2, 3, 2, "sigmoid", "bce")], {"train": x, "val": x}, config)


def test_pca_is_the_top_eigenvectors_and_its_error_the_discarded_variance():
    torch.manual_seed(0)
    x = torch.randn(400, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    pca = fit_pca(x, 2)
    centred = x - x.mean(dim=0)
    eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred)
    assert torch.allclose(pca.components.abs(), vectors[:, -2:].flip(1).T.abs(), atol=1e-8)
    error = (pca.reconstruct(x) - x).pow(2).sum(dim=1).mean()
    assert error.item() == pytest.approx(eigenvalues[:-2].sum().item() / len(x), rel=1e-8)
    with pytest.raises(ValueError):
        fit_pca(x, 7)


def test_nearest_matches_brute_force_and_precision_counts_same_label_hits():
    torch.manual_seed(0)
    base, queries = torch.randn(50, 4), torch.randn(9, 4)
    hits = nearest(queries, base, 5, batch_size=4)
    assert torch.equal(hits, torch.cdist(queries, base).topk(5, largest=False).indices)
    base_labels = torch.tensor([0, 0, 1, 1])
    found = torch.tensor([[0, 1], [0, 2]])
    assert precision_at_k(torch.tensor([0, 1]), base_labels, found) == pytest.approx(0.75)
