"""estimate_fisher: the diagonal Fisher of a classifier, keyed like its state_dict."""

from __future__ import annotations

import fedvc_client.fisher as fisher_module
import numpy as np
import pytest
import torch
from fedvc_client.fisher import estimate_fisher

from fedvc.tensors import TensorError


class Net(torch.nn.Module):
    """A tiny classifier with a BatchNorm (buffers), dropout and an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 6)
        self.bn = torch.nn.BatchNorm1d(6)
        self.drop = torch.nn.Dropout(0.5)
        self.fc2 = torch.nn.Linear(6, 3)
        self.unused = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


class Branchy(Net):
    """The same model with data-dependent Python control flow, which vmap cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().sum()) >= 0:  # always true, but .item() defeats vmap
            return super().forward(x)
        return x


def make(cls: type[Net] = Net) -> Net:
    torch.manual_seed(0)
    net = cls()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def data(count: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((count, 4)).astype(np.float32), rng.integers(0, 3, count)


def slow_empirical_fisher(
    net: torch.nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """The textbook loop: one backward per example, square, average."""
    clone = make(type(net))  # type: ignore[arg-type]
    clone.load_state_dict(net.state_dict())
    clone.eval()
    totals = {
        name: torch.zeros_like(p, dtype=torch.float64) for name, p in clone.named_parameters()
    }
    for xi, yi in zip(x, y, strict=True):
        clone.zero_grad()
        logits = clone(torch.from_numpy(xi[None]))
        torch.log_softmax(logits, dim=1)[0, int(yi)].backward()
        for name, p in clone.named_parameters():
            if p.grad is not None:
                totals[name] += p.grad.double() ** 2
    return {name: (t / len(x)).float().numpy() for name, t in totals.items()}


def test_keys_shapes_and_values() -> None:
    net = make()
    x, _ = data()
    fisher = estimate_fisher(net, x)
    state = net.state_dict()
    assert list(fisher) == list(state)
    for name, value in fisher.items():
        assert value.shape == tuple(state[name].shape) and value.dtype == np.float32, name
        assert (value >= 0).all() and np.isfinite(value).all(), name
    for buffer in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert not fisher[buffer].any()
    assert not fisher["unused.weight"].any() and not fisher["unused.bias"].any()
    assert fisher["fc1.weight"].any() and fisher["fc2.weight"].any()


def test_agrees_with_a_per_example_loop() -> None:
    net = make()
    x, y = data()
    expected = slow_empirical_fisher(net, x, y)
    for batch_size in (64, 7):
        fisher = estimate_fisher(net, x, y, empirical=True, batch_size=batch_size)
        for name, value in expected.items():
            np.testing.assert_allclose(fisher[name], value, rtol=1e-5, atol=1e-9, err_msg=name)


def test_plain_modules_take_the_vectorised_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loop(*args: object) -> None:
        raise AssertionError("the per-example loop should not run")

    monkeypatch.setattr(fisher_module, "_squared_grads_loop", no_loop)
    x, _ = data()
    assert estimate_fisher(make(), x)["fc1.weight"].any()
    with pytest.raises(AssertionError, match="should not run"):
        estimate_fisher(make(Branchy), x)


def test_falls_back_to_a_loop_when_vmap_fails() -> None:
    x, y = data()
    plain = estimate_fisher(make(), x, y, empirical=True)
    branchy = estimate_fisher(make(Branchy), x, y, empirical=True)
    for name, value in plain.items():
        np.testing.assert_allclose(branchy[name], value, rtol=1e-5, atol=1e-9, err_msg=name)
    # the sampled (true) Fisher draws the same labels on both paths
    for name, value in estimate_fisher(make(), x, seed=3).items():
        np.testing.assert_allclose(
            estimate_fisher(make(Branchy), x, seed=3)[name], value, rtol=1e-5, atol=1e-9
        )


def test_sampled_labels_are_seeded() -> None:
    net = make()
    x, _ = data()
    first, again = estimate_fisher(net, x, seed=1), estimate_fisher(net, x, seed=1)
    other = estimate_fisher(net, x, seed=2)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    subset = estimate_fisher(net, x, samples=5, seed=1)
    assert all(
        np.array_equal(subset[k], estimate_fisher(net, x, samples=5, seed=1)[k]) for k in subset
    )
    assert estimate_fisher(net, x, samples=1000)["fc1.weight"].any()  # more than there are: all


def test_several_label_draws_average_one_draw_estimates_over_copies() -> None:
    x, _ = data(12)
    several = estimate_fisher(make(), x, draws=4, seed=5)
    repeated = estimate_fisher(make(), np.repeat(x, 4, axis=0), seed=5)
    for name, value in repeated.items():
        np.testing.assert_allclose(several[name], value, rtol=1e-6, atol=1e-12, err_msg=name)
    assert any(not np.allclose(several[n], estimate_fisher(make(), x, seed=5)[n]) for n in several)
    with pytest.raises(ValueError, match="draws"):
        estimate_fisher(make(), x, draws=0)


def test_module_mode_and_gradients_are_left_alone() -> None:
    net = make()
    net.train()
    net.drop.eval()  # mixed flags come back as they were
    net.fc2.weight.grad = torch.full_like(net.fc2.weight, 7.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = data()
    estimate_fisher(net, x, y, empirical=True)
    estimate_fisher(make(Branchy), x)  # the loop path too
    assert net.training and net.fc1.training and net.bn.training and not net.drop.training
    assert net.fc1.weight.grad is None
    assert torch.equal(net.fc2.weight.grad, torch.full_like(net.fc2.weight, 7.0))
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name  # BatchNorm statistics did not move


def test_tied_and_frozen_parameters() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight
            self.scale = torch.nn.Parameter(torch.ones(3), requires_grad=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(tokens) * self.scale)

    torch.manual_seed(0)
    net = Tied()
    tokens = np.arange(5) % 5
    fisher = estimate_fisher(net, tokens, tokens, empirical=True)
    assert list(fisher) == list(net.state_dict())
    assert np.array_equal(fisher["embed.weight"], fisher["out.weight"])
    assert fisher["scale"].any()  # frozen parameters still have a Fisher


class NextToken(torch.nn.Module):
    """A tiny language model: logits over 5 tokens at every position, (batch, length, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.mix = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.mix(self.embed(tokens)))
        return self.out(hidden.cumsum(dim=1))  # each position sees the ones before it


def sequences(count: int = 9, length: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 5, (count, length + 1))
    return tokens[:, :-1], tokens[:, 1:]  # inputs and their next tokens


def test_a_sequence_model_sums_its_positions_log_likelihoods() -> None:
    torch.manual_seed(0)
    net = NextToken()
    x, y = sequences()
    totals = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in net.named_parameters()}
    for xi, yi in zip(x, y, strict=True):  # the textbook loop, one sequence at a time
        net.zero_grad()
        logits = net(torch.from_numpy(xi[None]))[0]
        torch.log_softmax(logits, dim=-1)[
            torch.arange(len(yi)), torch.from_numpy(yi)
        ].sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None
            totals[name] += p.grad.double() ** 2
    fisher = estimate_fisher(net, x, y, empirical=True, batch_size=4)
    for name, total in totals.items():
        np.testing.assert_allclose(fisher[name], (total / len(x)).float().numpy(), rtol=1e-5)

    sampled = estimate_fisher(net, x, draws=3, seed=2)  # a label drawn at every position
    assert all((v >= 0).all() and v.any() for v in sampled.values())
    again = estimate_fisher(net, x, draws=3, seed=2)
    assert all(np.array_equal(sampled[k], again[k]) for k in sampled)
    with pytest.raises(
        TensorError, match=r"one class label per position the model predicts: shape \[9, 6\]"
    ):
        estimate_fisher(net, x, y[:, :1], empirical=True)


def test_errors() -> None:
    net = make()
    x, y = data()
    with pytest.raises(ValueError, match="targets"):
        estimate_fisher(net, x, empirical=True)
    with pytest.raises(TensorError, match="20 examples but targets hold 3"):
        estimate_fisher(net, x, y[:3], empirical=True)
    with pytest.raises(TensorError, match=r"class indices in \[0, 3\)"):
        estimate_fisher(net, x, y + 5, empirical=True)
    with pytest.raises(TensorError, match="convert the inputs"):
        estimate_fisher(net, x.astype(np.float64))
    with pytest.raises(TensorError, match="at least one"):
        estimate_fisher(net, x[:0])
    with pytest.raises(ValueError, match="batch_size"):
        estimate_fisher(net, x, batch_size=0)
    with pytest.raises(TensorError, match=r"logits of shape \(batch, classes\)"):
        estimate_fisher(torch.nn.Flatten(0), x)
    with pytest.raises(
        TensorError, match=r"class label per position the model predicts: shape \[20\]"
    ):
        estimate_fisher(net, x, y[:, None], empirical=True)
