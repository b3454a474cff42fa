"""FedAvg, the server optimizers, chain and the registry (plug-ins included)."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from bitwise import assert_bit_equal

from fedvc.merge import (
    MergeError,
    MergeStrategy,
    StrategySpec,
    Update,
    chain,
    clip_by_norm,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedyogi,
    make,
    strategy_from_spec,
)
from fedvc.merge.base import ordered
from fedvc.merge.registry import available

fedavg_module = importlib.import_module("fedvc.merge.fedavg")  # the package re-exports fedavg()


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": (scale * rng.standard_normal((7, 5))).astype(np.float32),
        "fc.bias": (scale * rng.standard_normal(7)).astype(np.float32),
        "bn.num_batches_tracked": np.array(10 * seed, np.int64),
    }


BASE = model(0)
UPDATES = [Update(model(i), weight=float(i), client=f"c{i}") for i in range(1, 6)]
OPTIMIZERS = [fedavgm, fedadam, fedyogi, fedadagrad]


def run(strategy: MergeStrategy, updates: list[Update]) -> dict[str, np.ndarray]:
    merged, _ = strategy.merge(BASE, updates, strategy.init(BASE))
    return merged


@pytest.mark.parametrize("factory", [fedavg, *OPTIMIZERS])
def test_client_order_does_not_matter(factory) -> None:  # type: ignore[no-untyped-def]
    shuffled = UPDATES[:]
    random.Random(1).shuffle(shuffled)
    assert_bit_equal(run(factory(), UPDATES), run(factory(), shuffled))


@pytest.mark.parametrize("factory", [fedavg, *OPTIMIZERS])
def test_streaming_and_batch_agree(factory) -> None:  # type: ignore[no-untyped-def]
    strategy = factory()
    assert strategy.streams and strategy.accumulate is not None
    accumulator = strategy.accumulate(BASE, strategy.init(BASE))
    for update in sorted(UPDATES, key=lambda u: u.client):
        accumulator.add(update)
    streamed, _ = accumulator.finish()
    assert_bit_equal(streamed, run(strategy, UPDATES))


def test_fedavg_weights_are_honoured_and_identical_inputs_come_back() -> None:
    merged = run(fedavg(), UPDATES)
    total = sum(u.weight for u in UPDATES)
    expected = sum(u.weight * u.params["fc.weight"].astype(np.float64) for u in UPDATES) / total
    np.testing.assert_allclose(merged["fc.weight"], expected, rtol=1e-6, atol=1e-6)
    assert merged["bn.num_batches_tracked"] == round(
        sum(u.weight * 10 * int(u.client[1:]) for u in UPDATES) / total
    )
    same = [Update(model(3), weight=w, client=str(w)) for w in (1.0, 2.0, 5.0)]
    np.testing.assert_allclose(run(fedavg(), same)["fc.weight"], model(3)["fc.weight"], rtol=1e-6)
    heavy = [Update(model(1), weight=1e6, client="a"), Update(model(2), weight=1e-6, client="b")]
    np.testing.assert_allclose(run(fedavg(), heavy)["fc.bias"], model(1)["fc.bias"], rtol=1e-5)


def test_fedavg_is_chunked_past_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fedavg_module, "CHUNK", 8)
    merged = run(fedavg(), UPDATES)
    monkeypatch.undo()
    assert_bit_equal(merged, run(fedavg(), UPDATES))


def test_fedavg_errors() -> None:
    with pytest.raises(MergeError, match="at least one update"):
        run(fedavg(), [])
    with pytest.raises(MergeError, match="weights sum to 0"):
        run(fedavg(), [Update(model(1), weight=0.0, client="a")])
    odd = dict(model(2))
    odd["fc.bias"] = np.zeros(3, np.float32)
    with pytest.raises(MergeError, match=r"'fc\.bias' has shape"):
        run(fedavg(), [UPDATES[0], Update(odd, client="z")])
    with pytest.raises(MergeError, match="weight must be finite"):
        Update(model(1), weight=float("nan"))


def test_fedavgm_is_momentum_on_the_pseudo_gradient() -> None:
    strategy = fedavgm(server_lr=1.0, momentum=0.5)
    state = strategy.init(BASE)
    mean = run(fedavg(), UPDATES)
    first, state = strategy.merge(BASE, UPDATES, state)
    delta = mean["fc.weight"] - BASE["fc.weight"]
    np.testing.assert_allclose(first["fc.weight"], BASE["fc.weight"] + delta, rtol=1e-5, atol=1e-6)
    second, _ = strategy.merge(BASE, UPDATES, state)  # same round again: v = 0.5 v + delta
    np.testing.assert_allclose(
        second["fc.weight"], BASE["fc.weight"] + 1.5 * delta, rtol=1e-5, atol=1e-6
    )
    assert first["bn.num_batches_tracked"] == mean["bn.num_batches_tracked"]


def test_fedadam_first_step_matches_the_formula() -> None:
    eta, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3
    strategy = fedadam(server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    merged, state = strategy.merge(BASE, UPDATES, strategy.init(BASE))
    delta = run(fedavg(), UPDATES)["fc.bias"] - BASE["fc.bias"]
    m, v = (1 - b1) * delta, (1 - b2) * delta**2
    np.testing.assert_allclose(
        merged["fc.bias"], BASE["fc.bias"] + eta * m / (np.sqrt(v) + tau), rtol=1e-5
    )
    np.testing.assert_allclose(state["m/fc.bias"], m, rtol=1e-5)
    np.testing.assert_allclose(state["v/fc.bias"], v, rtol=1e-5)
    assert "m/bn.num_batches_tracked" not in state


def test_yogi_and_adagrad_second_moments() -> None:
    delta = run(fedavg(), UPDATES)["fc.bias"] - BASE["fc.bias"]
    _, state = fedadagrad(beta1=0.0).merge(BASE, UPDATES, fedadagrad().init(BASE))
    np.testing.assert_allclose(state["v/fc.bias"], delta**2, rtol=1e-5)
    _, state = fedyogi(beta2=0.99).merge(BASE, UPDATES, fedyogi().init(BASE))
    np.testing.assert_allclose(state["v/fc.bias"], 0.01 * delta**2, rtol=1e-5)


def test_server_state_is_not_mutated() -> None:
    strategy = fedadam()
    state = strategy.init(BASE)
    before = {k: v.copy() for k, v in state.items()}
    strategy.merge(BASE, UPDATES, state)
    assert_bit_equal(state, before)


def test_server_optimizers_need_a_base() -> None:
    with pytest.raises(MergeError, match="base"):
        fedadam().init(None)


def test_registry_rebuilds_every_builtin_from_its_spec() -> None:
    for name in ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        strategy = make(name)
        assert isinstance(strategy, MergeStrategy)
        rebuilt = strategy_from_spec(strategy.spec.to_json())
        assert rebuilt.spec == strategy.spec
        assert_bit_equal(run(rebuilt, UPDATES), run(strategy, UPDATES))
    assert make("fedadam", {"server_lr": 0.5}).spec.params["server_lr"] == 0.5


def test_registry_errors_are_helpful() -> None:
    with pytest.raises(MergeError, match=r"unknown strategy 'nope'.*fedavg"):
        make("nope")
    with pytest.raises(MergeError, match="bad parameters"):
        make("fedavg", {"speed": 3})
    with pytest.raises(MergeError, match="'name'"):
        strategy_from_spec({"params": {}})


def test_chain_spec_round_trips() -> None:
    strategy = chain(fedavg())
    assert strategy.spec == StrategySpec("chain", {}, (StrategySpec("fedavg"),))
    assert strategy_from_spec(strategy.spec.to_json()).spec == strategy.spec
    with pytest.raises(MergeError, match="ends with a merge strategy"):
        chain()


def test_plugin_strategy_from_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package that declares a ``fedvc.strategies`` entry point works by name."""
    (tmp_path / "my_plugin.py").write_text(
        "from fedvc.merge import fedavg, StrategySpec, MergeStrategy\n"
        "def halfway(scale=0.5):\n"
        "    inner = fedavg()\n"
        "    def merge(base, updates, state):\n"
        "        mean, _ = inner.merge(base, updates, state)\n"
        "        return {k: base[k] + scale * (mean[k] - base[k]) for k in mean}, {}\n"
        "    return MergeStrategy(StrategySpec('halfway', {'scale': scale}), lambda b: {}, merge)\n"
    )
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fedvc.strategies]\nhalfway = my_plugin:halfway\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)

    assert "halfway" in available()
    strategy = strategy_from_spec({"name": "halfway", "params": {"scale": 0.25}})
    merged = float(run(strategy, UPDATES)["fc.bias"][0])
    mean = float(run(fedavg(), UPDATES)["fc.bias"][0])
    assert merged == pytest.approx(
        BASE["fc.bias"][0] + 0.25 * (mean - BASE["fc.bias"][0]), rel=1e-5
    )


def test_chain_names_a_factory_passed_uncalled() -> None:
    # Regression: chain(clip_by_norm, fedavg()) raised AttributeError on `.spec`.
    with pytest.raises(MergeError, match=r"clip_by_norm \(not called\)"):
        chain(clip_by_norm, fedavg())  # type: ignore[arg-type]
    with pytest.raises(MergeError, match=r"fedavg \(not called\)"):
        chain(clip_by_norm(5.0), fedavg)  # type: ignore[arg-type]
    with pytest.raises(MergeError, match="only the last part may be a merge strategy"):
        chain(fedavg(), fedavg())


@pytest.mark.parametrize(
    "value",
    [
        {"name": "chain", "children": 5},
        {"name": "chain", "children": [5]},
        {"name": "chain", "children": "fedavg"},
        {"name": "fedavg", "params": {1: 2}},
    ],
)
def test_malformed_specs_are_merge_errors(value: dict[str, object]) -> None:
    # Regression: children were iterated unchecked (TypeError) and params keys not checked.
    with pytest.raises(MergeError, match=r"strategy 'chain': 'children'|string keys"):
        StrategySpec.from_json(value)


def test_updates_sharing_a_client_id_are_refused() -> None:
    # Regression: equal ids (the default "") were ordered by arrival, so the "canonical"
    # order, and the bits of a merge, depended on arrival order.
    anonymous = [Update(model(1)), Update(model(2))]
    with pytest.raises(MergeError, match=r"same client id ''.*distinct `client`"):
        run(fedavg(), anonymous)
    with pytest.raises(MergeError, match="same client id 'c1'"):
        ordered([UPDATES[0], UPDATES[1], UPDATES[0]])
    assert [u.client for u in ordered(UPDATES[::-1])] == [u.client for u in UPDATES]
