"""Conv stages: pooling indices down, unpooling at the argmax positions up, greedy conv stacks."""
import torch
import torch.nn.functional as F

from layerwise.store.checkpoint import load_stage, save_stage
from layerwise.config import LayerConfig, PipelineConfig, resolve_layers
from layerwise.nn.models import ConvAutoencoder, build_encoder, seeded_stage
from layerwise.train.autoencoder import train_autoencoder
from layerwise.nn.transfer import classifier_from_encoders, freeze, scratch_classifier


def _conv_layer(channels=3, kernel=3, pool=2, shape=(1, 6, 6), tied=False, **training):
    """A conv layer on inputs of shape, resolved (input, input_shape, size, loss bce: inputs in [0, 1])."""
    layer = LayerConfig(kind="conv", channels=channels, kernel=kernel, pool=pool, activation="sigmoid", tied=tied,
                        **{"epochs": 1, "lr": 0.01, **training})
    resolve_layers([layer], shape)
    return layer


def test_unpooling_puts_each_value_back_at_its_argmax():
    torch.manual_seed(0)
    ae = ConvAutoencoder((1, 6, 6), 3, 3, 2, "sigmoid", "bce")
    x = torch.rand(4, 36)
    maps = ae.encoder[1](ae.encoder[0](x.reshape(-1, 1, 6, 6)))  # before pooling
    code, indices = ae.encoder.encode(x)
    unpooled = ae.decoder.unpool(code.reshape(-1, 3, 3, 3), indices, output_size=(6, 6))
    for n in range(4):
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    window = maps[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    placed = unpooled[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    r, s = divmod(int(window.argmax()), 2)
                    assert placed[r, s] == window.max() == code.reshape(-1, 3, 3, 3)[n, c, i, j]
                    assert (placed != 0).sum() == 1  # every other position of the window is zero


def test_the_decoder_rebuilds_from_unpooled_maps_with_a_transposed_convolution():
    torch.manual_seed(0)
    ae = ConvAutoencoder((1, 6, 6), 3, 3, 2, "sigmoid", "bce")
    x = torch.rand(2, 36)
    code, out = ae(x)
    assert code.shape == (2, 27) and out.shape == (2, 36)
    _, indices = ae.encoder.encode(x)
    maps = F.max_unpool2d(code.reshape(-1, 3, 3, 3), indices, 2, output_size=(6, 6))
    expected = F.conv_transpose2d(maps, ae.decoder.deconv.weight, ae.decoder.deconv.bias, padding=1)
    assert torch.allclose(out, expected.flatten(1))


def test_a_tied_conv_decoder_uses_the_encoders_kernel():
    ae = seeded_stage(_conv_layer(tied=True), seed=0)
    assert ae.decoder.encoder_conv[0].weight.data_ptr() == ae.encoder[0].weight.data_ptr()
    names = {name for name, _ in ae.named_parameters()}
    assert names == {"encoder.0.weight", "encoder.0.bias", "decoder.bias"}


def test_odd_sizes_unpool_back_to_the_input_size():
    ae = seeded_stage(_conv_layer(channels=2, shape=(1, 7, 7)), seed=0)
    code, out = ae(torch.rand(3, 49))
    assert code.shape == (3, 2 * 3 * 3) and out.shape == (3, 49)


def test_a_conv_stage_learns_and_a_conv_stack_fine_tunes():
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 8, 8) > 0.7).float().flatten(1)
    layer = _conv_layer(channels=4, shape=(1, 8, 8), epochs=15, batch_size=16, optimizer="adam", lr=0.01, l1=0.001)
    ae = seeded_stage(layer, seed=1)
    result = train_autoencoder(ae, x, x[:16], layer)
    losses = [r.metrics["recon_loss"] for r in result.history]
    assert losses[-1] < 0.8 * losses[0]
    encoder = freeze(ae.encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    clf = classifier_from_encoders([encoder], 3, 0.0, seed=0)
    assert torch.equal(clf.hidden[0][0].weight, encoder[0].weight)
    assert clf(x).shape == (64, 3)
    clf(x).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    scratch = scratch_classifier([layer], 3, 0.0, seed=0)
    assert scratch(x).shape == (64, 3) and type(scratch.hidden[0]) is type(build_encoder(layer))


def test_a_saved_stage_loads_back_as_the_same_network(tmp_path):
    layer = _conv_layer(channels=2, tied=True)
    ae = seeded_stage(layer, seed=0)
    path = save_stage(tmp_path / "stage.pt", ae, {"layer": layer.model_dump(), "index": 1})
    loaded, config = load_stage(path)
    assert config["layer"] == layer.model_dump()  # stored as plain types (weights_only loading)
    assert type(loaded) is ConvAutoencoder and loaded.decoder.encoder_conv[0] is loaded.encoder[0]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ae.state_dict().items())


def test_an_unresolved_layer_is_refused_with_the_way_out():
    import pytest

    with pytest.raises(ValueError, match="input, loss left open.*resolve_layers"):
        seeded_stage(LayerConfig(size=4, epochs=1, lr=0.1), seed=0)


def test_config_resolves_conv_shapes_and_rejects_what_cannot_work():
    import pytest

    base = {"finetune": {"epochs": 1, "lr": 0.1}}
    conv = {"kind": "conv", "channels": 8, "epochs": 1, "lr": 0.001}
    cfg = PipelineConfig.model_validate({**base, "layers": [conv, {**conv, "channels": 16},
                                                            {"size": 10, "epochs": 1, "lr": 0.001}]})
    assert cfg.layers[0].input_shape == [1, 28, 28] and cfg.layers[1].input_shape == [8, 14, 14]
    assert cfg.sizes == [784, 8 * 14 * 14, 16 * 7 * 7, 10] and cfg.layers[2].input == 16 * 7 * 7
    assert PipelineConfig.model_validate(cfg.model_dump()).sizes == cfg.sizes  # resolved configs re-validate
    for layers, message in (
            ([{"size": 10, "epochs": 1, "lr": 0.1}, conv], "conv layers come first"),
            ([{**conv, "contractive": 0.1}], "contractive is implemented for dense layers"),
            ([{**conv, "size": 5}], "a conv layer's code has 8x14x14 = 1568 values"),
            ([{"size": 10, "kernel": 3, "epochs": 1, "lr": 0.1}], "only conv layers take these"),
            ([{**conv, "kernel": 4}], "kernel must be odd")):
        with pytest.raises(ValueError, match=message):
            PipelineConfig.model_validate({**base, "layers": layers})
