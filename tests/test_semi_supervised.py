"""The semi-supervised recipe's parts on tiny tensors, each against an independent computation
(issue 28): the power iteration's direction against the top eigenvector of the KL's Hessian,
batch norm's statistics left alone by the perturbed passes, no gradient through the clean target,
the joint labelled + unlabelled pass, the batch norm that keeps a pretrained block's function, and
the linear decay and ramp schedules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerwise.config import FinetuneConfig, LayerConfig, resolve_layers
from layerwise.config.schema import UnlabelledConfig
from layerwise.datasets.splits import Labelled
from layerwise.train.finetune import build_classifier, finetune
from layerwise.nn.models import Classifier, batch_norms
from layerwise.train.classifier import train_classifier
from layerwise.train.optim import linear_decay_
from layerwise.nn.transfer import keep_pretrained_function_
from layerwise.nn.unlabelled import (UnlabelledObjective, adversarial_direction, ramp, statistics_kept,
                                  virtual_adversarial_loss)


def _tiny(batch_norm: bool = False, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    hidden = [nn.Sequential(nn.Linear(5, 7), nn.Tanh()), nn.Sequential(nn.Linear(7, 6), nn.Tanh())]
    return Classifier(hidden, 4, batch_norm=batch_norm).double()


def test_power_iterations_find_the_top_eigenvector_of_the_kl_hessian():
    """H = d^2/dr^2 KL(p(x) || p(x + r)) at r = 0, computed exactly (autograd's hessian, float64)
    for each image of a tiny tanh network; enough power iterations give its top eigenvector."""
    model = _tiny()
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = F.log_softmax(model(x), dim=1).detach()
    direction = adversarial_direction(model, x, target, torch.Generator().manual_seed(2), iterations=30)
    for i in range(len(x)):
        def kl(r, i=i):
            log_q = F.log_softmax(model((x[i] + r).unsqueeze(0)), dim=1)[0]
            return (target[i].exp() * (target[i] - log_q)).sum()
        hessian = torch.autograd.functional.hessian(kl, torch.zeros(5, dtype=torch.float64))
        values, vectors = torch.linalg.eigh(hessian)
        top = vectors[:, -1]
        assert values[-1] > 2 * values[-2].abs()  # a clear top direction, so the test can tell
        assert abs(F.cosine_similarity(direction[i], top, dim=0).item()) > 0.999
        assert direction[i].norm().item() == pytest.approx(1.0)
    one = adversarial_direction(model, x, target, torch.Generator().manual_seed(2), iterations=1)
    assert min(abs(F.cosine_similarity(one[i], direction[i], dim=0).item()) for i in range(3)) < 0.999


def test_the_perturbed_passes_leave_batch_norm_statistics_alone():
    """After the objective the running statistics are what the clean pass alone makes of them."""
    model = _tiny(batch_norm=True).train()
    x = torch.rand(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = _tiny(batch_norm=True).train()
    reference(x)  # the clean pass only, with the same start (seed 0)
    virtual_adversarial_loss(model, x, 2.0, torch.Generator().manual_seed(0), entropy=1.0, iterations=2)
    for norm, expected in zip(batch_norms(model), batch_norms(reference)):
        assert torch.equal(norm.running_mean, expected.running_mean)
        assert torch.equal(norm.running_var, expected.running_var)
    with statistics_kept(model):
        before = [n.running_mean.clone() for n in batch_norms(model)]
        model(x + 1)
        assert all(torch.equal(n.running_mean, b) for n, b in zip(batch_norms(model), before))
    assert all(n.momentum == 0.1 for n in batch_norms(model))  # restored


def test_no_gradient_flows_through_the_clean_target():
    """Without entropy, the cost's gradient is the KL's with p(x) a constant: computed here by hand
    from the same direction, the target detached; the clean logits get no gradient at all."""
    model = _tiny().float()  # the cost is computed in fp32: so is the reference
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    clean = model(x)
    clean.retain_grad()
    value = virtual_adversarial_loss(model, x, 0.5, torch.Generator().manual_seed(4), clean_logits=clean)
    value.backward()
    assert clean.grad is None or not clean.grad.any()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    target = F.log_softmax(model(x), dim=1).detach()
    r = 0.5 * adversarial_direction(model, x, target, torch.Generator().manual_seed(4))
    log_q = F.log_softmax(model(x + r), dim=1)
    (target.exp() * (target - log_q)).sum(dim=1).mean().backward()
    for a, p in zip(got, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-5, atol=1e-8)


def test_labelled_and_unlabelled_images_share_one_pass_with_batch_norm():
    """With batch norm the fine-tune normalises labelled and unlabelled images together: the
    running mean after one step is the mean of both batches' pre-activations, not of either alone."""
    layers = [LayerConfig(input=5, size=7, activation="relu", epochs=1, lr=0.01)]
    resolve_layers(layers, (1, 1, 5))
    g = torch.Generator().manual_seed(0)
    x, xu = torch.rand(10, 5, generator=g), torch.rand(40, 5, generator=g)
    config = FinetuneConfig(init="scratch", epochs=1, lr=1e-9, batch_size=10, keep="last", batch_norm=True,
                            optimizer="adam", schedule="constant", unlabelled=UnlabelledConfig(
                                objective="virtual_adversarial", ramp=[0, 0], batch_size=20, epsilon=1.0))
    model = build_classifier(None, config, layers, 2)
    start = model.hidden[0][0].weight.detach().clone(), model.hidden[0][0].bias.detach().clone()
    objective = UnlabelledObjective(config.unlabelled, xu, 1, torch.Generator().manual_seed(1))
    assert objective.joint_with(model)
    drawn_x, _ = UnlabelledObjective(config.unlabelled, xu, 1, torch.Generator().manual_seed(1)).draw(0, x.device, False)
    labelled = Labelled(x, torch.arange(10) % 2, x[:0], torch.arange(0), x_unlabelled=xu)
    train_classifier(model, labelled, config, seed=0)
    joint = torch.cat([x, drawn_x]) @ start[0].T + start[1]
    expected = 0.9 * torch.zeros(7) + 0.1 * joint.mean(0)
    assert torch.allclose(model.hidden[0][1].running_mean, expected, atol=1e-6)


def test_batch_norm_keeps_a_pretrained_block_computing_what_it_computed():
    torch.manual_seed(0)
    encoders = [nn.Sequential(nn.Linear(6, 5), nn.Sigmoid()), nn.Sequential(nn.Linear(5, 3), nn.ReLU())]
    x = torch.rand(256, 6)
    plain = Classifier([nn.Sequential(*e) for e in encoders], 2)
    normed = Classifier([nn.Sequential(*e) for e in encoders], 2, batch_norm=True)
    normed.output.load_state_dict(plain.output.state_dict())
    keep_pretrained_function_(normed.train(), x)
    assert torch.allclose(normed(x), plain(x), atol=1e-4)  # training mode: the batch's statistics
    assert torch.allclose(normed.eval()(x), plain(x), atol=1e-4)  # eval mode: the running ones


def test_a_pretrained_fine_tune_with_batch_norm_starts_from_the_pretrained_function():
    layers = [LayerConfig(input=6, size=5, activation="relu", epochs=1, lr=0.01)]
    resolve_layers(layers, (1, 1, 6))
    encoder = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    x = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))
    config = FinetuneConfig(epochs=1, lr=1e-12, batch_size=8, keep="last", batch_norm=True, optimizer="sgd",
                            momentum=0.0, schedule="constant")
    tuned = finetune([encoder], Labelled(x[:8], torch.arange(8) % 2, x[:0], torch.arange(0), x_unlabelled=x[8:]),
                     config, layers, 2)
    hidden = tuned.model.eval().hidden[0]
    # one step moved the running statistics a tenth of the way towards 8 images' own
    assert torch.allclose(hidden(x), encoder(x), atol=0.05)
    plain = build_classifier([encoder], config, layers, 2).train().hidden[0]  # batch norm as initialised
    assert not torch.allclose(plain(x), encoder(x), atol=0.2)  # would normalise the pretrained code away


def test_linear_decay_holds_then_falls_to_zero_and_switches_beta1():
    weight = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([weight], lr=0.002)
    linear_decay_(opt, total_steps=10, start=0.6, beta1=0.5)
    seen = []
    for _ in range(10):
        weight.grad = torch.ones(1)
        opt.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
    # steps 1-5 keep 0.002; from step 6 (= 0.6 * 10) the rate is 0.002 * (10 - t) / 4
    expected = [0.002] * 5 + [0.002 * (10 - t) / 4 for t in range(6, 11)]
    assert [lr for lr, _ in seen] == pytest.approx(expected)
    assert [b for _, b in seen] == [0.9] * 5 + [0.5] * 5


def test_no_ramp_means_the_full_weight_from_the_first_step():
    assert ramp(0, 100, 1.0, 0.0, 0.0) == 1.0
    assert ramp(5, 100, 2.0, 0.0, 0.1) == pytest.approx(1.0)


def test_batch_norm_and_dropout_do_not_mix_under_the_virtual_adversarial_objective():
    with pytest.raises(ValueError, match="takes no dropout"):
        FinetuneConfig(epochs=1, lr=0.1, batch_norm=True, dropout=0.5,
                       unlabelled=UnlabelledConfig(objective="virtual_adversarial"))
    with pytest.raises(ValueError, match="power_iterations"):
        UnlabelledConfig(objective="pseudo_label", power_iterations=2)


def test_a_conv_block_normalises_its_maps_and_keeps_its_pretrained_function():
    from layerwise.nn.models import ConvEncoder
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 6, 6), 3, 3, 2, "sigmoid")
    x = torch.rand(128, 36)
    plain = Classifier([encoder], 2)
    import copy
    normed = Classifier([copy.deepcopy(encoder)], 2, batch_norm=True)
    assert isinstance(normed.hidden[0].norm, nn.BatchNorm2d) and normed.hidden[0][0] is not None
    normed.output.load_state_dict(plain.output.state_dict())
    keep_pretrained_function_(normed.train(), x)
    assert torch.allclose(normed(x), plain(x), atol=1e-4)
    assert torch.allclose(normed.eval()(x), plain(x), atol=1e-4)
