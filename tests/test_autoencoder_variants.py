"""The autoencoder family's math on tiny tensors: L2 on the code, the contractive term against the
autograd Jacobian, tied weights sharing storage, denoising against the clean input."""
import pytest
import torch

from layerwise.config import LayerConfig
from layerwise.nn.losses import contractive_penalty, l2_penalty, reconstruction_loss
from layerwise.nn.models import Autoencoder, seeded_autoencoder
from layerwise.train.autoencoder import objective, train_autoencoder


def test_l2_value_and_gradient():
    code = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
    # rows: 1.25 and 4.0 -> mean 2.625
    value = l2_penalty(code, 0.1)
    assert torch.isclose(value, torch.tensor(0.2625))
    value.backward()
    assert torch.allclose(code.grad, 0.1 * 2 * code.detach() / 2)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_contractive_term_equals_the_autograd_jacobian_norm(activation):
    torch.manual_seed(0)
    ae = Autoencoder(7, 5, activation, "mse")
    x = torch.randn(4, 7)
    code = ae.encoder(x)
    closed = contractive_penalty(code, ae.encoder[0].weight, activation, weight=0.3)
    norms = [torch.autograd.functional.jacobian(ae.encoder, row).pow(2).sum() for row in x]
    assert torch.allclose(closed, 0.3 * torch.stack(norms).mean(), atol=1e-6)


def test_contractive_gradient_matches_the_autograd_jacobian_norm_gradient():
    torch.manual_seed(1)
    ae = Autoencoder(6, 3, "sigmoid", "bce")
    x = torch.rand(5, 6)
    contractive_penalty(ae.encoder(x), ae.encoder[0].weight, "sigmoid", 1.0).backward()
    closed_grad = ae.encoder[0].weight.grad.clone()
    ae.zero_grad()
    jac = [torch.autograd.functional.jacobian(ae.encoder, row, create_graph=True).pow(2).sum() for row in x]
    torch.stack(jac).mean().backward()
    assert torch.allclose(closed_grad, ae.encoder[0].weight.grad, atol=1e-6)


def test_tied_decoder_shares_the_encoders_storage():
    ae = seeded_autoencoder(8, 3, "sigmoid", "bce", seed=0, tied=True)
    assert ae.decoder.weight.data_ptr() == ae.encoder[0].weight.data_ptr()
    assert ae.decoder.weight.shape == (8, 3)
    untied = seeded_autoencoder(8, 3, "sigmoid", "bce", seed=0)
    n = sum(p.numel() for p in ae.parameters())
    assert n == 8 * 3 + 3 + 8 and n < sum(p.numel() for p in untied.parameters())
    x = torch.rand(4, 8)
    code, out = ae(x)
    assert torch.allclose(out, code @ ae.encoder[0].weight + ae.decoder.bias)
    reconstruction_loss(out, x, "bce").backward()  # both uses of the weight reach one gradient
    assert ae.encoder[0].weight.grad is not None and ae.encoder[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        ae.encoder[0].weight.add_(1.0)
    assert torch.equal(ae.decoder.weight, ae.encoder[0].weight.t())


def test_objective_adds_only_the_penalties_in_force():
    ae = seeded_autoencoder(6, 4, "sigmoid", "bce", seed=0)
    x = torch.rand(3, 6)
    code, out = ae(x)
    recon = reconstruction_loss(out, x, "bce")
    assert objective(recon, ae, code) is recon
    both = objective(recon, ae, code, l2=0.5, contractive=0.2)
    expected = recon + l2_penalty(code, 0.5) + contractive_penalty(code, ae.encoder[0].weight, "sigmoid", 0.2)
    assert torch.isclose(both, expected)


def test_denoising_corrupts_the_input_only_and_compares_with_the_clean_one(monkeypatch):
    import layerwise.train.autoencoder as training

    seen = {}
    real = training.reconstruction_loss

    def spy(output, target, kind):
        seen.setdefault("targets", []).append(target.clone())
        return real(output, target, kind)

    monkeypatch.setattr(training, "reconstruction_loss", spy)
    ae = seeded_autoencoder(10, 4, "sigmoid", "bce", seed=0)
    inputs = []
    ae.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    x = torch.rand(16, 10) + 0.1  # no zeros, so a masked entry is visible
    layer = LayerConfig(input=10, size=4, loss="bce", epochs=1, batch_size=16, optimizer="sgd", lr=0.1,
                        denoising={"kind": "mask", "level": 0.5, "rescale": False})
    train_autoencoder(ae, x, x[:4], layer)
    fed, target = inputs[0], seen["targets"][0]
    assert (fed == 0).any() and not (target == 0).any()  # the encoder saw zeros, the loss the clean batch
    assert torch.equal(torch.sort(target.flatten()).values, torch.sort(x.flatten()).values)


def test_tied_and_contractive_layers_train_through_the_stage_loop():
    torch.manual_seed(0)
    x = torch.rand(64, 12)
    ae = seeded_autoencoder(12, 6, "sigmoid", "bce", seed=0, tied=True)
    layer = LayerConfig(input=12, size=6, loss="bce", tied=True, epochs=3, batch_size=16, optimizer="adam", lr=0.01,
                        l2=0.01, contractive=0.1)
    result = train_autoencoder(ae, x, x[:16], layer)
    losses = [r.metrics["recon_loss"] for r in result.history]
    assert losses[-1] < losses[0]
