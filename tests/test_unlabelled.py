"""finetune.unlabelled's objectives on tiny tensors, each against an independent computation: Lee's
ramp, the pseudo-label target, the two-pass consistency, the kept autoencoders' reconstruction
(gradients reach decoders only when it is on), and a fine-tune without an objective unchanged."""
import math

import pytest
import torch
import torch.nn.functional as F

from layerwise.config import FinetuneConfig, LayerConfig, PipelineConfig, method, resolve_layers
from layerwise.config import cells as grid_cells
from layerwise.config.schema import UnlabelledConfig
from layerwise.datasets.splits import Labelled
from layerwise.train.finetune import build_classifier, finetune
from layerwise.train.stack import pretrain_stack
from layerwise.nn.unlabelled import (VAT_XI, adversarial_direction, consistency_loss, pseudo_label_loss, ramp,
                                  stack_reconstruction_loss, virtual_adversarial_loss)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (99, 0.0), (100, 0.0), (350, 1.5), (599, 2.994), (600, 3.0),
                                            (999, 3.0)])
def test_the_weight_ramps_up_as_lee_2013(step, expected):
    assert ramp(step, 1000, 3.0, 0.1, 0.6) == pytest.approx(expected)


def test_the_pseudo_label_is_the_most_confident_class_without_a_gradient_through_it():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], requires_grad=True)
    loss = pseudo_label_loss(logits)
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    expected = -(math.log(probs[0][0]) + math.log(probs[1][1])) / 2  # targets 0 and 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    onehot = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    assert torch.allclose(logits.grad, (torch.tensor(probs) - onehot) / 2, atol=1e-6)  # the target is a constant


def test_two_passes_that_agree_cost_nothing_and_disagreement_is_the_squared_difference():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert consistency_loss(a, a).item() == 0
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    assert consistency_loss(a, b).item() == pytest.approx(((p - q) ** 2).sum().item())


def test_the_adversarial_direction_is_the_kl_hessian_times_the_probe_for_a_linear_softmax():
    """For logits W x the KL's Hessian in the input is W^T (diag p - p p^T) W: one power iteration
    from the probe d gives H d / |H d|, computed here by hand (float64)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    target = F.log_softmax(model(x), dim=1).detach()
    direction = adversarial_direction(model, x, target, torch.Generator().manual_seed(7))
    probes = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float32).double()
    w = model.weight.detach()
    for i in range(3):
        p = target[i].exp()
        hessian = w.T @ (torch.diag(p) - torch.outer(p, p)) @ w
        expected = hessian @ probes[i]
        cosine = F.cosine_similarity(direction[i], expected, dim=0).item()
        assert cosine > 1 - 10 * VAT_XI and direction[i].norm().item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_the_virtual_adversarial_cost_runs_without_dropout_and_trains_the_classifier(kind):
    torch.manual_seed(0)
    x = torch.rand(8, 16)
    layer = (LayerConfig(input=16, size=8, epochs=1, lr=0.01) if kind == "dense" else
             LayerConfig(kind="conv", channels=2, kernel=3, pool=2, activation="sigmoid", epochs=1, lr=0.01))
    layers = [layer]
    resolve_layers(layers, (1, 4, 4))
    model = build_classifier(None, FinetuneConfig(init="scratch", epochs=1, lr=0.1, dropout=0.5), layers, 3)
    model.train()
    loss = virtual_adversarial_loss(model, x, 2.0, torch.Generator().manual_seed(0), entropy=0.5)
    again = virtual_adversarial_loss(model, x, 2.0, torch.Generator().manual_seed(0), entropy=0.5)
    assert loss.item() == again.item() > 0 and model.training  # dropout off: the same value; mode restored
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_vat_with_entropy_adds_the_entropy_of_the_clean_predictions_with_its_gradient():
    """VAT+EntMin: the same KL plus weight * H(p(x)), H by hand; its gradient flows through p(x)
    (a tiny epsilon leaves the KL's gradient negligible beside the entropy's)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    plain = virtual_adversarial_loss(model, x, 1.0, torch.Generator().manual_seed(3))
    with_entropy = virtual_adversarial_loss(model, x, 1.0, torch.Generator().manual_seed(3), entropy=0.5)
    p = F.softmax(model(x), dim=1).detach().double()
    entropy = -(p * p.log()).sum(dim=1).mean().item()
    assert with_entropy.item() == pytest.approx(plain.item() + 0.5 * entropy, rel=1e-5)
    model.zero_grad()
    virtual_adversarial_loss(model, x, 1e-6, torch.Generator().manual_seed(3), entropy=1.0).backward()
    logits = model(x).detach().requires_grad_()
    (-(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()).backward()
    assert torch.allclose(model.bias.grad, logits.grad.sum(0), atol=1e-5)


def test_entropy_belongs_to_virtual_adversarial_only():
    assert UnlabelledConfig(objective="virtual_adversarial", entropy=1.0).entropy == 1.0
    with pytest.raises(ValueError, match="entropy"):
        UnlabelledConfig(objective="pseudo_label", entropy=1.0)


def _stack(kind_noise=0.0):
    layers = [LayerConfig(input=16, size=8, epochs=1, lr=0.01, optimizer="adam"),
              LayerConfig(input=8, size=4, epochs=1, lr=0.01, optimizer="adam")]
    resolve_layers(layers, (1, 4, 4))
    x = torch.rand(64, 16, generator=torch.Generator().manual_seed(0))
    return layers, x, pretrain_stack(layers, {"train": x[:48], "val": x[48:]}, seed=0)


def _labelled(x):
    y = torch.arange(len(x)) % 3
    return Labelled(x[:24], y[:24], x[48:], y[48:], x_unlabelled=x[24:48])


def test_reconstruction_keeps_each_stage_and_trains_its_decoder_through_the_shared_encoder():
    layers, x, stack = _stack()
    stages = [stage.model for stage in stack.stages]
    config = FinetuneConfig(epochs=2, lr=0.1, batch_size=8, keep="last",
                            unlabelled=UnlabelledConfig(objective="reconstruction", ramp=[0, 0], noise=0))
    model = build_classifier(stages, config, layers, 3)
    assert model.autoencoders[0].encoder is model.hidden[0] and model.autoencoders[1].encoder is model.hidden[1]
    # the objective is each stage's reconstruction loss of its own clean input, summed
    h1 = model.hidden[0](x)
    expected = F.binary_cross_entropy(stages[0].decoder(h1).sigmoid(), x, reduction="sum") / len(x) \
        if stages[0].loss == "bce" else None
    value = stack_reconstruction_loss(model, x, 0.0, torch.Generator())
    _, out2 = model.autoencoders[1](h1)
    from layerwise.nn.losses import reconstruction_loss
    manual = reconstruction_loss(model.autoencoders[0](x)[1], x, stages[0].loss) + \
        reconstruction_loss(out2, h1, stages[1].loss)
    assert torch.allclose(value, manual)
    if expected is not None:
        assert torch.allclose(reconstruction_loss(model.autoencoders[0](x)[1], x, "bce"), expected, rtol=1e-5)

    before = [stage.decoder.weight.clone() for stage in stages]
    tuned = finetune(stages, _labelled(x), config, layers, 3)
    assert not hasattr(tuned.model, "autoencoders")  # the classifier alone is what is kept
    assert all(torch.equal(stage.decoder.weight, w) for stage, w in zip(stages, before))  # the stack untouched

    # the decoders get gradients with reconstruction on, and there are none without it
    model = build_classifier(stages, config, layers, 3)
    total = stack_reconstruction_loss(model, x, 0.0, torch.Generator())
    total.backward()
    assert all(ae.decoder.weight.grad is not None and ae.decoder.weight.grad.abs().sum() > 0
               for ae in model.autoencoders)
    plain = build_classifier(stages, config.model_copy(update={"unlabelled": UnlabelledConfig(objective="pseudo_label")}),
                             layers, 3)
    assert not hasattr(plain, "autoencoders")


def test_a_fine_tune_without_an_objective_ignores_the_unlabelled_images():
    layers, x, stack = _stack()
    config = FinetuneConfig(epochs=2, lr=0.1, batch_size=8, keep="last", seed=3)
    with_pool = finetune(stack.encoders, _labelled(x), config, layers, 3)
    plain = _labelled(x)
    plain.x_unlabelled = None
    without = finetune(stack.encoders, plain, config, layers, 3)
    for a, b in zip(with_pool.model.state_dict().values(), without.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("objective", ["pseudo_label", "consistency", "reconstruction", "virtual_adversarial"])
def test_each_objective_trains_from_scratch_and_pretrained(objective):
    layers, x, stack = _stack()
    for init, stages in (("pretrained", [s.model for s in stack.stages]), ("scratch", None)):
        config = FinetuneConfig(init=init, epochs=2, lr=0.1, batch_size=8, keep="last", dropout=0.1,
                                unlabelled=UnlabelledConfig(objective=objective, ramp=[0, 0.5], batch_size=16))
        tuned = finetune(stages, _labelled(x), config, layers, 3)
        assert math.isfinite(tuned.result.history[-1].metrics["train_loss"])


def test_an_ablation_grid_adds_objectives_beside_the_plain_rows():
    cfg = PipelineConfig.model_validate({
        "layers": [{"size": 8, "epochs": 1, "lr": 0.01}],
        "finetune": {"epochs": 1, "lr": 0.1, "unlabelled": {"objective": "pseudo_label", "weight": 2.0}},
        "ablation": {"labels": [20], "inits": ["pretrained", "scratch", "pretrained+pseudo_label",
                                               "scratch+reconstruction"]}})
    cells = {method(cell): cell.finetune for cell in grid_cells(cfg)}
    assert list(cells) == ["pretrained", "scratch", "pretrained+pseudo_label", "scratch+reconstruction"]
    assert cells["pretrained"].unlabelled is None and cells["scratch"].unlabelled is None
    assert cells["pretrained+pseudo_label"].unlabelled.weight_in_force() == 2.0  # the block's settings
    assert cells["scratch+reconstruction"].unlabelled.weight_in_force() == 1.0  # another objective: its defaults
    with pytest.raises(ValueError, match=r"'pretrained\+magic' is not an init"):
        PipelineConfig.model_validate({"layers": [{"size": 8}], "finetune": {},
                                       "ablation": {"labels": [20], "inits": ["pretrained+magic"]}})
