import torch

from layerwise.nn.losses import l1_penalty, reconstruction_loss


def test_l1_value_is_weighted_mean_of_row_sums():
    code = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, -0.25]])
    # rows: 1.5 and 2.25 -> mean 1.875
    assert torch.isclose(l1_penalty(code, 0.1), torch.tensor(0.1875))
    assert l1_penalty(code, 0.0).item() == 0.0


def test_l1_gradient_is_weight_times_sign_over_batch():
    code = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.25]], requires_grad=True)
    l1_penalty(code, 0.2).backward()
    expected = 0.2 * torch.sign(code.detach()) / 2
    assert torch.allclose(code.grad, expected)


def test_bce_takes_logits_and_sums_over_features():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # sigmoid(0) = 0.5: every element costs log 2, two features per row
    assert torch.isclose(reconstruction_loss(logits, target, "bce"), 2 * torch.log(torch.tensor(2.0)))


def test_mse_sums_over_features_and_averages_over_batch():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.zeros(2, 2)
    assert reconstruction_loss(out, target, "mse").item() == 2.5


def test_masking_zeroes_about_the_given_fraction_and_keeps_the_rest():
    from layerwise.nn.losses import corrupt

    torch.manual_seed(0)
    x = torch.rand(200, 50) + 0.1  # no zeros before masking
    noisy = corrupt(x, "mask", 0.3)
    zeroed = noisy == 0
    assert abs(zeroed.float().mean().item() - 0.3) < 0.02
    assert torch.equal(noisy[~zeroed], x[~zeroed])


def test_gaussian_noise_has_the_given_std():
    from layerwise.nn.losses import corrupt

    torch.manual_seed(0)
    x = torch.zeros(400, 100)
    assert abs(corrupt(x, "gaussian", 0.5).std().item() - 0.5) < 0.01


def test_rescaled_masking_keeps_the_expected_input():
    from layerwise.nn.losses import corrupt

    torch.manual_seed(0)
    x = torch.full((500, 200), 0.4)
    noisy = corrupt(x, "mask", 0.5, rescale=True)
    assert torch.allclose(noisy.unique(), torch.tensor([0.0, 0.8]))
    assert abs(noisy.mean().item() - 0.4) < 0.01


def test_fast_bce_matches_pytorch_value_and_gradient_bit_for_bit():
    """The rewritten BCE (log(1 + exp(-|z|)) instead of log1p) gives PyTorch's gradient exactly, so
    training is unchanged, and its value to float rounding, extreme logits included."""
    import torch.nn.functional as F

    from layerwise.nn.losses import bce_with_logits_sum

    torch.manual_seed(0)
    z = torch.cat([torch.randn(64, 30) * 5, torch.tensor([[-100.0, -30.0, -1e-4, 0.0, 1e-4, 30.0, 100.0] * 2 +
                                                          [0.0] * 16] * 2)])
    x = torch.rand_like(z)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours, theirs = bce_with_logits_sum(za, x) / 3, F.binary_cross_entropy_with_logits(zb, x, reduction="sum") / 3
    ours.backward()
    theirs.backward()
    assert torch.equal(za.grad, zb.grad)
    assert torch.isclose(ours, theirs, rtol=1e-6, atol=0)
    # the textbook formula in float64 as an independent reference, elementwise
    z64, x64 = z.double(), x.double()
    p = torch.sigmoid(z64).clamp(1e-300, 1 - 1e-16)
    reference = -(x64 * torch.log(p) + (1 - x64) * torch.log1p(-p))
    finite = (z.abs() < 30).all(dim=1)  # where 1 - p does not underflow in float64
    assert torch.allclose(bce_with_logits_sum(z[finite], x[finite]).double(), reference[finite].sum(), rtol=1e-6)


def test_bce_target_needing_a_gradient_gets_it():
    """The unlabelled reconstruction objective's target is the codes below a layer: its gradient flows."""
    import torch.nn.functional as F

    z = torch.randn(4, 5)
    ta, tb = torch.rand(4, 5, requires_grad=True), None
    tb = ta.detach().clone().requires_grad_()
    reconstruction_loss(z, ta, "bce").backward()
    (F.binary_cross_entropy_with_logits(z, tb, reduction="sum") / 4).backward()
    assert ta.grad is not None and torch.equal(ta.grad, tb.grad)
