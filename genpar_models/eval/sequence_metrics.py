"""Sample quality of generated series: TimeGAN's post-hoc scores and a recurrent feature space.

Series are float (N, T, C), NaN after each length, in the source's units (what the shards
store; generated series are denormalised first), so on ``sines`` the numbers compare with
TimeGAN's (Yoon et al. 2019, github.com/jsyoon0823/TimeGAN metrics/):

- `discriminative_score`: a GRU classifier (hidden C // 2, as TimeGAN's) is trained to tell
  real from generated on 80% of both sets and tested on the other 20%; the score is
  |accuracy - 0.5| (0 = indistinguishable).
- `predictive_mae`: a GRU (hidden C // 2) reads channels 0..C-2 of steps 0..T-2 and predicts
  channel C-1 one step ahead; trained on generated series, its mean absolute error on real
  ones (train on synthetic, test on real). Trained on real series instead, the same number is
  the real-on-real reference. A univariate series predicts its own next step.
- The recurrent encoder behind `eval/fid`: a GRU trained once per dataset (cached by the
  caller) to predict each next step of the standardised train split; a series' features are
  its last hidden state and its mean hidden state over the steps inside its length.

Each post-hoc network trains from a fixed seed on one thread, so a score depends only on its
inputs. The per-example outcomes come back too, for bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from genpar_models.eval import uncertainty

BATCH = 128  # TimeGAN's post-hoc batch size


def split_nan(x: np.ndarray) -> tuple[Tensor, Tensor]:
    """(values with NaN padding set to 0, lengths (N,) int64) of (N, T, C) NaN-padded series."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    lengths = (~torch.isnan(t[..., 0])).sum(dim=1)
    return torch.nan_to_num(t, nan=0.0), lengths


class PostHocGru(nn.Module):
    """GRU over a packed batch; `per_step` gives (N, T, out), otherwise (N, out) at the end."""

    def __init__(self, inputs: int, hidden: int, out: int, *, per_step: bool) -> None:
        super().__init__()
        self.rnn = nn.GRU(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)
        self.per_step = per_step

    def hidden(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(per-step hidden states (N, T, H), last hidden state (N, H))."""
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False
        )
        out, h = self.rnn(packed)
        steps, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=x.shape[1]
        )
        return steps, h[-1]

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        steps, last = self.hidden(x, lengths)
        return self.head(steps if self.per_step else last)


def _fit(net: nn.Module, loss_of, n: int, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(BATCH, n),), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss_of(idx).backward()
        opt.step()


@dataclass(frozen=True)
class Score:
    value: float
    outcomes: np.ndarray  # per test example: 1/0 correct (discriminative) or abs error sum
    weights: np.ndarray  # per test example: 1 (discriminative) or steps scored (predictive)


def discriminative_score(real: np.ndarray, fake: np.ndarray, *, steps: int, seed: int) -> Score:
    """|accuracy - 0.5| of a post-hoc GRU classifier on a held-out 20% of real and generated."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, lengths = split_nan(np.concatenate([real, fake]))
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    order = torch.as_tensor(rng.permutation(len(y)))
    cut = int(round(0.8 * len(y)))
    train, test = order[:cut], order[cut:]
    channels = x.shape[2]
    net = PostHocGru(channels, max(channels // 2, 1), 1, per_step=False)
    bce = nn.BCEWithLogitsLoss()

    def loss_of(idx: Tensor) -> Tensor:
        i = train[idx]
        return bce(net(x[i], lengths[i]).squeeze(1), y[i])

    _fit(net, loss_of, len(train), steps, seed)
    with torch.no_grad():
        correct = ((net(x[test], lengths[test]).squeeze(1) > 0).float() == y[test]).numpy()
    return Score(abs(float(correct.mean()) - 0.5), correct.astype(np.float64), np.ones(len(test)))


def _predictive_io(series: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, lengths = split_nan(series)
    c = x.shape[2]
    inputs = x[:, :-1, : c - 1] if c > 1 else x[:, :-1]
    target = x[:, 1:, c - 1]
    steps = (lengths - 1).clamp(min=0)
    mask = torch.arange(x.shape[1] - 1)[None, :] < steps[:, None]
    return inputs, target, steps, mask


def predictive_mae(train: np.ndarray, test: np.ndarray, *, steps: int, seed: int) -> Score:
    """MAE on `test` of a one-step-ahead GRU predictor trained on `train` (TimeGAN's)."""
    torch.manual_seed(seed)
    xi, yi, li, mi = _predictive_io(train)
    ok = li > 0
    xi, yi, li, mi = xi[ok], yi[ok], li[ok], mi[ok]
    channels = train.shape[2]
    net = PostHocGru(xi.shape[2], max(channels // 2, 1), 1, per_step=True)

    def loss_of(idx: Tensor) -> Tensor:
        pred = net(xi[idx], li[idx]).squeeze(2)
        return ((pred - yi[idx]).abs() * mi[idx]).sum() / mi[idx].sum().clamp(min=1)

    _fit(net, loss_of, len(xi), steps, seed)
    xt, yt, lt, mt = _predictive_io(test)
    with torch.no_grad():
        err = ((net(xt, lt).squeeze(2) - yt).abs() * mt).sum(dim=1).double().numpy()
    counts = mt.sum(dim=1).double().numpy()
    # TimeGAN averages each series' MAE over series
    per_series = np.divide(err, counts, out=np.zeros_like(err), where=counts > 0)
    keep = counts > 0
    return Score(float(per_series[keep].mean()), per_series[keep], np.ones(int(keep.sum())))


def mean_interval(score: Score, *, resamples: int, confidence: float, seed: int, transform=None):
    """Bootstrap interval of the mean outcome (through `transform`, e.g. |acc - 0.5|)."""
    rng = np.random.default_rng(seed)
    n = len(score.outcomes)
    f = transform or (lambda v: v)
    reps = np.array(
        [f(float(np.mean(score.outcomes[rng.integers(0, n, n)]))) for _ in range(resamples)]
    )
    return uncertainty.bc_interval(score.value, reps, confidence)


# ---------------------------------------------------------------- the recurrent feature space


class SequenceEncoder(nn.Module):
    """GRU next-step predictor whose hidden states are the feature space of `eval/fid`."""

    def __init__(self, *, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels, self.hidden_dim = channels, hidden
        self.net = PostHocGru(channels, hidden, channels, per_step=True)

    def spec(self) -> dict:
        return {"kind": "sequence-encoder", "channels": self.channels, "hidden": self.hidden_dim}

    @torch.no_grad()
    def features(self, series: np.ndarray, batch: int = 512) -> np.ndarray:
        """(N, 2H) float64: last hidden state and mean hidden state inside each length."""
        x, lengths = split_nan(series)
        out = []
        for i in range(0, len(x), batch):
            xb, lb = x[i : i + batch], lengths[i : i + batch]
            steps, last = self.net.hidden(xb, lb)
            inside = (torch.arange(xb.shape[1])[None, :] < lb[:, None]).float()[..., None]
            mean = (steps * inside).sum(1) / inside.sum(1).clamp(min=1)
            out.append(torch.cat([last, mean], dim=1))
        return torch.cat(out).double().numpy() if out else np.zeros((0, 2 * self.hidden_dim))


def train_sequence_encoder(
    train: np.ndarray, *, hidden: int, steps: int, seed: int
) -> tuple[SequenceEncoder, dict]:
    """The encoder fitted to predict every next step of (standardised) train series."""
    torch.manual_seed(seed)
    x, lengths = split_nan(train)
    enc = SequenceEncoder(channels=x.shape[2], hidden=hidden)
    mask = (torch.arange(x.shape[1] - 1)[None, :] < (lengths - 1)[:, None]).float()[..., None]
    losses: list[float] = []

    def loss_of(idx: Tensor) -> Tensor:
        pred = enc.net(x[idx], lengths[idx])[:, :-1]
        m = mask[idx]
        loss = (((pred - x[idx, 1:]) ** 2) * m).sum() / (m.sum() * x.shape[2]).clamp(min=1)
        losses.append(float(loss.detach()))
        return loss

    _fit(enc, loss_of, len(x), steps, seed)
    tail = losses[-20:] or [float("nan")]
    return enc.eval(), {"next_step_mse": float(np.mean(tail)), "steps": steps}
