"""The recurrent VAE: masking for variable length, its ELBO against a hand computation, the
importance-weighted bound, free-running samples with drawn lengths, KL annealing, free bits."""

from __future__ import annotations

import math

import pytest
import torch

from genpar_models.config import ModelConfig, TrainConfig
from genpar_models.models.registry import get_family
from genpar_models.models.rvae.network import RVAE
from tests.helpers import family_steps


def _net(**kw) -> RVAE:
    torch.manual_seed(0)
    cfg = ModelConfig(name="rvae", latent_dim=3, hidden_dim=8, **kw)
    return get_family("rvae").build(cfg, (7, 2))


def _batch(n: int = 6) -> torch.Tensor:
    x = torch.randn(n, 7, 2, generator=torch.Generator().manual_seed(1))
    x[1, 4:] = float("nan")
    x[2, 1:] = float("nan")
    return x


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
@pytest.mark.parametrize("decoder_input", ["latent", "latent_and_previous"])
def test_padding_never_changes_a_series_score(rnn: str, decoder_input: str) -> None:
    """What lies beyond a series' length does not touch its ELBO: masking, packed encoding."""
    net = _net(rnn=rnn, decoder_input=decoder_input).eval()
    x = _batch()
    a = net(x, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[1, 4:] = 123.0  # garbage after the length ...
    y[1, 4:, 0] = float("nan")  # ... with the first channel still marking the end
    b = net(y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a["elbo"], b["elbo"])
    assert a["steps"].tolist() == [7, 4, 1, 7, 7, 7]
    short = net(x[1:2, :4], generator=torch.Generator().manual_seed(3))
    again = net(x[1:2], generator=torch.Generator().manual_seed(3))
    if decoder_input == "latent":  # same z, same steps: the same score, padded or not
        torch.testing.assert_close(short["elbo"], again["elbo"])


def test_elbo_terms_match_a_hand_computation() -> None:
    net = _net().eval()
    x = _batch(3)
    out = net(x, generator=torch.Generator().manual_seed(4))
    x0 = torch.nan_to_num(x)
    mask = ~torch.isnan(x[..., 0])
    mu, logvar = net.encode(x0, mask.sum(1))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))
    mean = net.decoder(mu + torch.exp(0.5 * logvar) * eps)
    s = torch.exp(net.log_scale)
    log_p = torch.distributions.Normal(mean, s).log_prob(x0).sum(2)
    torch.testing.assert_close(out["recon"], -(log_p * mask).sum(1))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0, 1)
    ).sum(1)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))


def test_importance_weighted_bound_is_above_the_elbo_on_average() -> None:
    net = _net().eval()
    x = _batch()
    gen = torch.Generator().manual_seed(5)
    elbo = torch.stack([net(x, generator=gen)["elbo"] for _ in range(64)]).mean(0)
    iw = net.importance_weighted_bound(x, 64, generator=gen)
    assert (iw >= elbo - 1e-3).all()
    one = net.importance_weighted_bound(x, 1, generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(one).all()


def test_samples_run_free_with_lengths_drawn_from_the_train_split() -> None:
    for decoder_input in ("latent", "latent_and_previous"):
        net = _net(decoder_input=decoder_input).eval()
        net.fit_lengths(torch.tensor([3, 3, 3, 7]))
        a = net.sample(400, generator=torch.Generator().manual_seed(7))
        b = net.sample(400, generator=torch.Generator().manual_seed(7))
        assert a.shape == (400, 7, 2) and torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a, b, equal_nan=True)
        lengths = (~torch.isnan(a[..., 0])).sum(1)
        assert set(lengths.tolist()) == {3, 7}
        assert 0.65 < (lengths == 3).float().mean() < 0.85  # 3 of 4 training series
        assert torch.isfinite(a[:, :3]).all()


def test_kl_annealing_free_bits_and_input_dropout_in_training_steps() -> None:
    net = _net(decoder_input="latent_and_previous", input_dropout=0.5, free_bits=0.5)
    assert net.free_bits == 0.5
    steps = family_steps(net, TrainConfig(lr=1e-3, kl_anneal_steps=4, kl_weight=2.0))
    x = _batch(8)
    weights = [
        steps.step(x, torch.Generator().manual_seed(i))["train/kl_weight"].item() for i in range(6)
    ]
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert int(net.steps_taken) == 6
    out = {"recon": torch.zeros(2), "kl_dims": torch.tensor([[0.1, 2.0, 0.0], [0.3, 0.0, 0.0]])}
    # batch-mean KL per dimension 0.2, 1.0, 0.0 -> floors of 0.5: 0.5 + 1.0 + 0.5
    assert math.isclose(steps.loss(out, 1.0).item(), 2.0)
    net.train()
    a = net(x, generator=torch.Generator().manual_seed(9))["elbo"]
    b = net(x, generator=torch.Generator().manual_seed(10))["elbo"]
    assert not torch.equal(a, b)  # the dropout (and eps) come from the generator


def test_the_family_refuses_image_data_and_image_families_refuse_sequences(tiny) -> None:
    from genpar_models.errors import ConfigError
    from genpar_models.models.registry import check_model_config
    from tests.helpers import as_family

    cfg = tiny.model_copy(update={"model": as_family(tiny.model, "rvae")})
    with pytest.raises(ConfigError, match="models sequences, but data.modality is 'images'"):
        check_model_config(cfg)
    with pytest.raises(ConfigError, match="the vae family does not read model.hidden_dim"):
        check_model_config(ModelConfig(name="vae", hidden_dim=32))


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_compression_variants_quantise_the_recurrent_decoder(rnn: str) -> None:
    """int8 dynamic quantisation covers the decoder's GRU/LSTM and linears; bf16 runs the whole
    decoder in bfloat16; both sample close to fp32 from the same latents."""
    from genpar_models.infer.compress import build_variant, size_bytes

    net = _net(rnn=rnn).eval()
    base = net.sample(64, generator=torch.Generator().manual_seed(0))
    for name, tol in (("int8", 0.1), ("bf16", 0.1)):
        variant = build_variant(net, name)
        if name == "int8":
            kinds = {type(m).__module__ for m in variant.decoder.modules()}
            assert any("quantized" in k for k in kinds), kinds
            assert size_bytes(variant.decoder)[0] < 0.6 * size_bytes(net.decoder)[0]
        else:
            assert variant.decoder.rnn.weight_hh_l0.dtype == torch.bfloat16
        out = variant.sample(64, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and torch.equal(torch.isnan(out), torch.isnan(base))
        assert (out - base).abs().nan_to_num().max() < tol, name


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_the_encoder_reads_each_series_to_its_length_as_a_packed_sequence_would(rnn: str) -> None:
    # encode() runs the padded batch and reads each series' state after its own last step;
    # a packed sequence (the reference) stops each series there. Two layers: the last one's.
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    net = RVAE(sequence_shape=(7, 2), latent_dim=3, hidden_dim=8, rnn=rnn, rnn_layers=2)
    x = _batch()
    x0, lengths = torch.nan_to_num(x), (~torch.isnan(x[..., 0])).sum(1)
    mu, logvar = net.encode(x0, lengths)
    packed = pack_padded_sequence(x0, lengths, batch_first=True, enforce_sorted=False)
    _, state = net.encoder(packed)
    h = (state[0] if rnn == "lstm" else state)[-1]
    ref_mu, ref_logvar = net.to_latent(h).chunk(2, dim=1)
    torch.testing.assert_close(mu, ref_mu)
    torch.testing.assert_close(logvar, ref_logvar.clamp(-12.0, 8.0))
    (mu.sum() + logvar.sum()).backward()  # gradients reach the encoder through the gather
    assert net.encoder.weight_ih_l0.grad is not None
    assert net.encoder.weight_ih_l0.grad.abs().sum() > 0
