"""What a fine-tune does with the training images whose labels it does not have: an objective on
unlabelled batches added to the labelled loss (finetune.unlabelled). The labelled part is left
exactly as it is; each step also draws an unlabelled batch (its own generator) and adds

    weight(step) * objective(unlabelled batch)

- pseudo_label (Lee 2013): the network's own most confident class is the target (cross-entropy),
  weight ramped from 0 to its final value between two points of the fine-tune (Lee's T1, T2);
- reconstruction: each pretrained layer's autoencoder is kept (its encoder *is* the classifier's
  hidden layer, its decoder is trained too) and its denoising reconstruction loss on the unlabelled
  batch continues, so the code keeps describing the images;
- consistency (the Pi-model of Laine & Aila 2017): two passes with independent dropout and input
  noise must give the same class probabilities (squared difference of the softmaxes);
- virtual_adversarial (Miyato et al. 2018): the contractive idea moved to the classifier's output.
  Where the contractive autoencoder penalises the code's sensitivity to the input in every
  direction, this penalises the class probabilities' change (KL) along the one direction they are
  most sensitive to, found by a power iteration, at distance epsilon. No dropout in its passes;
  batch norm normalises each pass with its own batch, and only the clean pass moves its running
  statistics (the perturbed images are not the images the network will see). With `entropy` > 0
  the entropy of the clean predictions is added (Miyato's VAT+EntMin), which pushes the decision
  boundaries away from the unlabelled images as well.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.datasets.source import to_unit
from layerwise.nn.losses import reconstruction_loss
from layerwise.nn.models import Classifier, Reconstructor, batch_norms, reset_linear


def ramp(step: int, total: int, weight: float, start: float, end: float) -> float:
    """Lee (2013)'s schedule over a fine-tune of `total` steps: 0 before start*total, then rising
    linearly to `weight` at end*total, `weight` after."""
    t1, t2 = start * total, end * total
    if step < t1:
        return 0.0
    if step >= t2 or t2 <= t1:
        return weight
    return weight * (step - t1) / (t2 - t1)


def pseudo_label_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the network's own most confident class (no gradient through the target)."""
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two passes' class probabilities (per image, summed over classes)."""
    return (logits_a.softmax(dim=1) - logits_b.softmax(dim=1)).pow(2).sum(dim=1).mean()


VAT_XI = 1e-2  # the power iteration's probe length: small beside epsilon, large enough for fp32 differences


def _unit(d: torch.Tensor) -> torch.Tensor:
    """Each image's perturbation scaled to L2 norm 1."""
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))


@contextmanager
def without_dropout(model: nn.Module):
    """Dropout off; the rest of the model (batch norm) stays in its mode."""
    dropping = getattr(model, "dropping", None)
    training = model.training
    if dropping is None:  # a network without the switch: eval mode is the only way to stop its dropout
        model.eval()
    else:
        model.dropping = False
    try:
        yield
    finally:
        if dropping is None:
            model.train(training)
        else:
            model.dropping = dropping


@contextmanager
def statistics_kept(model: nn.Module):
    """Batch norm normalises with the batch as usual, but its running statistics do not move
    (momentum 0)."""
    norms = batch_norms(model)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum


Statistics = dict  # batch norm module -> (mean, biased variance) of one batch, per unit or map


@contextmanager
def recorded_statistics(model: nn.Module):
    """Records the batch statistics each batch norm normalises with in the passes made inside."""
    stats: Statistics = {}

    def record(norm: nn.Module, args: tuple) -> None:
        if norm.training:
            (z,) = args
            dims = [0] if z.dim() == 2 else [0, *range(2, z.dim())]
            stats[norm] = (z.mean(dims).detach(), z.var(dims, unbiased=False).detach())
    hooks = [norm.register_forward_pre_hook(record) for norm in batch_norms(model)]
    try:
        yield stats
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def normalised_as(model: nn.Module, stats: Statistics):
    """Passes that normalise with the given statistics (a clean pass's) instead of their own batch's,
    moving no running statistic: with no perturbation they give the clean pass's output exactly,
    and each image's output depends on that image alone (as the power iteration assumes). Without
    it, a perturbed batch normalised by its own statistics differs from the clean one even at
    r = 0, and the cost then chases that difference instead of the perturbation."""
    saved = []
    for norm in batch_norms(model):
        saved.append((norm, norm.running_mean, norm.running_var, norm.training))
        norm.running_mean, norm.running_var = stats[norm]  # eval mode reads these, writes nothing
        norm.eval()
    try:
        yield
    finally:
        for norm, mean, var, training in saved:
            norm.running_mean, norm.running_var = mean, var
            norm.train(training)


def virtual_adversarial_loss(model: nn.Module, x: torch.Tensor, epsilon: float,
                             generator: torch.Generator, entropy: float = 0.0, iterations: int = 1,
                             clean_logits: Optional[torch.Tensor] = None,
                             stats: Optional[Statistics] = None) -> torch.Tensor:
    """KL(p(x) || p(x + r)) with r of norm epsilon along the direction that changes p the most:
    `iterations` power iterations from a random direction (each the gradient of the KL at a probe of
    length VAT_XI). p(x) is a constant target; no dropout in any pass; the perturbed passes normalise
    with the clean pass's batch statistics (normalised_as) and only the clean pass moves the running
    ones. With entropy > 0, entropy * H(p(x)) is added, its gradient flowing through the clean pass
    (same forward). clean_logits: x's logits from a pass already made (without dropout), e.g.
    together with the labelled batch, and stats the statistics it normalised with."""
    with without_dropout(model):
        if clean_logits is None:
            with torch.set_grad_enabled(entropy > 0), recorded_statistics(model) as stats:
                clean_logits = model(x)
        clean = F.log_softmax(clean_logits.float(), dim=1)
        target = clean.detach()
        with normalised_as(model, stats) if stats else statistics_kept(model):
            adversarial = epsilon * adversarial_direction(model, x, target, generator, iterations)
            value = _kl(model(x + adversarial), target)
    return value + entropy * prediction_entropy(clean) if entropy > 0 else value


def prediction_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over images of the entropy of the class probabilities (given as log-probabilities)."""
    return -(log_probs.exp() * log_probs).sum(dim=1).mean()


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per image, averaged (target as log-probabilities)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, log_target=True, reduction="batchmean")


def adversarial_direction(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                          generator: torch.Generator, iterations: int = 1) -> torch.Tensor:
    """Per image, the unit direction of the KL's gradient at a probe of length VAT_XI, starting from
    a random one: each iteration is a power iteration towards the top eigenvector of the KL's
    Hessian in the input (the gradient at a small probe d is about H d)."""
    direction = _unit(torch.randn(x.shape, generator=generator)).to(x.device)
    for _ in range(iterations):
        probe = (VAT_XI * direction).requires_grad_()
        (gradient,) = torch.autograd.grad(_kl(model(x + probe), target), probe)
        direction = _unit(gradient)
    return direction


def masked(x: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Masking noise from the fine-tune's own generator (drawn on the CPU, as Classifier's dropout)."""
    if level <= 0:
        return x
    keep = (torch.rand(x.shape, generator=generator, dtype=x.dtype) >= level).to(x.device, non_blocking=True)
    return x * keep


def stack_reconstruction_loss(model: Classifier, x: torch.Tensor, noise: float,
                              generator: torch.Generator) -> torch.Tensor:
    """Sum over the layers of each kept autoencoder's reconstruction loss of its own input (the
    codes below it, clean), from a masked copy of that input: the greedy objective, continued."""
    total, h = None, x
    for autoencoder in model.autoencoders:
        _, out = autoencoder(masked(h, noise, generator))
        loss = reconstruction_loss(out.float(), h, autoencoder.loss)
        total = loss if total is None else total + loss
        h = autoencoder.encoder(h)
    return total


def attach_autoencoders(model: Classifier, autoencoders: list[Reconstructor]) -> Classifier:
    """Keep each layer's autoencoder beside the classifier, its encoder being the classifier's
    hidden layer (the same module: one set of weights); its decoder trains with the fine-tune."""
    for block, autoencoder in zip(model.hidden, autoencoders):
        autoencoder.encoder = block
        if hasattr(autoencoder.decoder, "encoder_linear"):  # tied: decode with this encoder's weight
            autoencoder.decoder.encoder_linear = [block[0]]
        if hasattr(autoencoder.decoder, "encoder_conv"):
            autoencoder.decoder.encoder_conv = [block[0]]
    model.autoencoders = nn.ModuleList(autoencoders)
    return model


def fresh_decoders(autoencoders: list[Reconstructor], generator: torch.Generator) -> list[Reconstructor]:
    """Decoders drawn from generator (a scratch control's: no pretrained decoder to keep)."""
    for autoencoder in autoencoders:
        for module in autoencoder.decoder.modules():
            if isinstance(module, nn.Linear):
                reset_linear(module, generator)
            elif isinstance(module, nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, a=5 ** 0.5, generator=generator)
                nn.init.zeros_(module.bias)
    return autoencoders


def detach_autoencoders(model: Classifier) -> Classifier:
    """The trained classifier alone (the decoders were a training aid)."""
    if getattr(model, "autoencoders", None) is not None:
        del model.autoencoders
    return model


@dataclass
class UnlabelledObjective:
    """The unlabelled part of a fine-tune: config (an UnlabelledConfig), the images, the total steps."""
    config: object
    images: torch.Tensor  # every training image whose label the cell does not have (pixels, any device)
    total_steps: int
    generator: torch.Generator  # unlabelled batches and their noise: the labelled stream is untouched

    def draw(self, step: int, device: torch.device, head_only: bool) -> Optional[tuple[torch.Tensor, float]]:
        """A fresh unlabelled batch and weight(step); None while the weight is 0 (or when nothing it
        trains can learn: reconstruction while only the output layer learns)."""
        cfg = self.config
        weight = ramp(step, self.total_steps, cfg.weight_in_force(), cfg.ramp[0], cfg.ramp[1])
        if weight == 0 or not len(self.images) or (head_only and cfg.objective == "reconstruction"):
            return None
        pick = torch.randint(len(self.images), (cfg.batch_size,), generator=self.generator)
        return to_unit(self.images[pick].to(device, non_blocking=True)), weight

    def joint_with(self, model: nn.Module) -> bool:
        """Whether the labelled batch and the unlabelled one go through the network in one pass: for
        the virtual-adversarial cost of a network with batch norm. Two passes would normalise each
        batch by its own statistics, and the network can then fit the labels under the labelled
        batch's statistics while flattening its predictions under the other's (seen on MNIST: with
        100 labels, the same 100 images every step, the held-out error rose to 85 %)."""
        return self.config.objective == "virtual_adversarial" and bool(batch_norms(model))

    def value(self, model: Classifier, x: torch.Tensor, clean_logits: Optional[torch.Tensor] = None,
              stats: Optional[Statistics] = None) -> torch.Tensor:
        """The objective on the unlabelled batch x; clean_logits: x's logits from a joint pass
        (joint_with), without dropout, and stats the batch statistics it normalised with."""
        cfg = self.config
        labelled_noise, model.noise = model.noise, self.generator  # dropout masks of these passes: ours
        try:
            if cfg.objective == "pseudo_label":
                return pseudo_label_loss(model(x).float())
            if cfg.objective == "consistency":
                return consistency_loss(model(masked(x, cfg.noise, self.generator)).float(),
                                        model(masked(x, cfg.noise, self.generator)).float())
            if cfg.objective == "virtual_adversarial":
                return virtual_adversarial_loss(model, x, cfg.epsilon, self.generator, cfg.entropy,
                                                cfg.power_iterations, clean_logits, stats)
            return stack_reconstruction_loss(model, x, cfg.noise, self.generator)
        finally:
            model.noise = labelled_noise

    def loss(self, model: Classifier, step: int, device: torch.device, head_only: bool) -> Optional[torch.Tensor]:
        """weight(step) * the objective on a fresh unlabelled batch, in passes of its own; None while
        the weight is 0."""
        drawn = self.draw(step, device, head_only)
        return None if drawn is None else drawn[1] * self.value(model, drawn[0])


def copy_trainable(modules: list[nn.Module]) -> list[nn.Module]:
    """Copies of (frozen) stages, trainable again; the stages themselves are left untouched."""
    copies = [copy.deepcopy(m) for m in modules]
    for m in copies:
        m.requires_grad_(True)
        m.train()
    return copies
