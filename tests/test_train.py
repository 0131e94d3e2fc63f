"""Training: the JumpReLU estimators, the fast step against dense autograd, feature recovery,
resuming, suites (one and two processes) and the cached small suite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gsnb.saes.jumprelu import (
    Params,
    jumprelu,
    loss_and_grads,
    reference_loss,
    step,
)
from gsnb.saes.train import TrainConfig, target_sites, train_sae, train_suite
from gsnb.saes.trainer import SAETrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_dictionary_batches(
    n_batches, batch, d=16, n_features=32, k=3, seed=0, site="resid_post.0"
):
    """Rows that are non-negative combinations of ``k`` of ``n_features`` unit vectors."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    batches = []
    for _ in range(n_batches):
        chosen = torch.rand(batch, n_features, generator=gen).argsort(1)[:, :k]
        magnitudes = torch.rand(batch, k, generator=gen) * 2 + 0.5
        codes = torch.zeros(batch, n_features).scatter_(1, chosen, magnitudes)
        batches.append({site: codes @ features})
    return features, batches


# --- estimators ------------------------------------------------------------------------------


def test_jumprelu_and_step_pseudo_derivatives_follow_the_paper():
    eps = 0.1
    theta = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.0], requires_grad=True)
    # inside the window (|z - theta| < eps/2) above and below theta; outside above and below;
    # and a zero threshold, whose JumpReLU pseudo-derivative is 0 (it carries a factor theta).
    pre = torch.tensor([[0.32, 0.27, 0.9, 0.1, 0.01]], requires_grad=True)
    grad_out = torch.tensor([[2.0, 3.0, 5.0, 7.0, 11.0]])

    out = jumprelu(pre, theta, eps)
    assert torch.equal(out, torch.tensor([[0.32, 0.0, 0.9, 0.0, 0.01]]))
    out.backward(grad_out)
    # d/dz = H(z - theta); d/dtheta = -(theta / eps) K((z - theta) / eps)
    assert torch.allclose(pre.grad, torch.tensor([[2.0, 0.0, 5.0, 0.0, 11.0]]))
    assert torch.allclose(theta.grad, torch.tensor([-2.0 * 3, -3.0 * 3, 0.0, 0.0, 0.0]))

    pre.grad = theta.grad = None
    out = step(pre, theta, eps)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]]))
    out.backward(grad_out)
    # d/dz = 0; d/dtheta = -(1 / eps) K((z - theta) / eps)
    assert torch.equal(pre.grad, torch.zeros_like(pre))
    assert torch.allclose(theta.grad, torch.tensor([-20.0, -30.0, 0.0, 0.0, -110.0]))


def random_params(d_in, d_out, d_sae, gen):
    W = torch.randn(d_sae, d_out, generator=gen)
    W /= W.norm(dim=1, keepdim=True)
    W_encT = torch.randn(d_sae, d_in, generator=gen) / d_in**0.5
    return Params(
        W_encT,
        torch.randn(d_sae, generator=gen) * 0.1,
        W,
        torch.randn(d_out, generator=gen) * 0.1,
        torch.rand(d_sae, generator=gen) * 0.3,
    )


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("target_l0", [None, 4.0])
@pytest.mark.parametrize("d_in,d_out", [(12, 12), (12, 20)])
def test_fast_step_gradients_equal_dense_autograd(sparse, target_l0, d_in, d_out):
    gen = torch.Generator().manual_seed(1)
    p = random_params(d_in, d_out, 48, gen)
    x = torch.randn(96, d_in, generator=gen)
    y = torch.randn(96, d_out, generator=gen) if d_out != d_in else x
    eps = 0.05  # wide enough that many entries sit in the kernel's window
    leaf = Params(*(t.clone().requires_grad_() for t in p.tensors()))
    loss = reference_loss(leaf, x, y, eps, 0.01, target_l0)
    loss.backward()

    stats, grads = loss_and_grads(p, x, y, eps, 0.01, target_l0, sparse=sparse)
    assert stats.loss == pytest.approx(loss.item(), rel=1e-5)
    window = ((x @ p.W_encT.T + p.b_enc - p.threshold).abs() < eps / 2).sum()
    assert window > 20, "the test must exercise the threshold's kernel"
    for name, fast, ref in zip(Params.NAMES, grads.tensors(), leaf.tensors(), strict=True):
        assert ref.grad.abs().max() > 0, name
        torch.testing.assert_close(fast, ref.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fast_step_statistics_are_the_batch_means():
    gen = torch.Generator().manual_seed(2)
    p = random_params(8, 8, 24, gen)
    x = torch.randn(50, 8, generator=gen)
    stats, _ = loss_and_grads(p, x, x, 0.001, 0.0)
    pre = x @ p.W_encT.T + p.b_enc
    f = pre * (pre > p.threshold)
    x_hat = f @ p.W_dec + p.b_dec
    assert stats.l0 == pytest.approx(float((f > 0).sum(1).float().mean()))
    assert stats.mse == pytest.approx(float((x - x_hat).pow(2).sum(1).mean()), rel=1e-5)
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert stats.fvu == pytest.approx(float(fvu), rel=1e-5)


def test_trainer_keeps_decoder_rows_unit_norm_and_thresholds_non_negative():
    trainer = SAETrainer(8, 8, 16, 0.001, 0, torch.device("cpu"), torch.float32)
    x = torch.randn(64, 8)
    for _ in range(5):
        trainer.step(x, x, lr=0.05, bandwidth=0.001, coefficient=1.0, target_l0=None, sparse=None)
    assert torch.allclose(trainer.p.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)
    assert (trainer.p.threshold >= 0).all()


# --- training --------------------------------------------------------------------------------


def test_training_recovers_the_features_of_a_sparse_dictionary():
    features, batches = sparse_dictionary_batches(400, 1024)
    # A short run, so a higher learning rate than the recipe's; everything else is the default.
    cfg = TrainConfig(
        d_sae=64, batch_size=1024, n_tokens=400 * 1024, lr=0.02, l0_coefficient=0.05, progress=False
    )
    result = train_sae(None, "resid_post.0", cfg, batches)
    learned = result.sae.W_dec / result.sae.W_dec.norm(dim=1, keepdim=True)
    best = (features @ learned.T).max(1).values  # each true feature's closest learned one
    assert best.mean() > 0.9, best
    assert result.history[-1].l0 < 6  # three are active per row
    assert result.history[-1].fvu < result.history[0].fvu


def test_saved_sae_takes_raw_activations_whatever_their_scale():
    _, batches = sparse_dictionary_batches(30, 256)
    loud = [{k: v * 100.0 for k, v in b.items()} for b in batches]
    cfg = TrainConfig(d_sae=32, batch_size=256, n_tokens=30 * 256, progress=False)
    quiet_sae = train_sae(None, "resid_post.0", cfg, batches).sae
    loud_sae = train_sae(None, "resid_post.0", cfg, loud).sae
    x = batches[0]["resid_post.0"]
    torch.testing.assert_close(loud_sae(100.0 * x), 100.0 * quiet_sae(x), rtol=1e-3, atol=1e-3)
    assert loud_sae.cfg.input_scale == pytest.approx(quiet_sae.cfg.input_scale / 100, rel=1e-5)
    assert torch.allclose(loud_sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


def test_init_l0_starts_training_with_that_many_active_features():
    _, batches = sparse_dictionary_batches(1, 1000)
    cfg = TrainConfig(
        d_sae=64, batch_size=1000, n_tokens=1000, init_l0=8, log_every=1, progress=False
    )
    first = train_sae(None, "resid_post.0", cfg, batches).history[0]
    assert first.l0 == pytest.approx(8, abs=0.1)


def test_transcoder_reads_mlp_in_and_writes_mlp_out(gemma3):
    tokens = torch.randint(4, 70, (8, 16))
    tokens[:, 0] = 2
    _, cache = gemma3.run_with_cache(tokens, ["mlp_in.1", "mlp_out.1"])
    rows = {s: v[:, 1:].reshape(-1, v.shape[-1]) for s, v in cache.items()}
    batches = [rows] * 40
    cfg = TrainConfig(
        d_sae=64, batch_size=len(rows["mlp_in.1"]), n_tokens=40 * 120, lr=3e-3, progress=False
    )
    sae = train_sae(gemma3, "transcoder.1", cfg, batches).sae
    assert (sae.site_in, sae.site_out, sae.cfg.model_name) == (
        "mlp_in.1",
        "mlp_out.1",
        "tiny-gemma3",
    )
    y, y_hat = rows["mlp_out.1"], sae(rows["mlp_in.1"])
    assert ((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()) < 0.9
    assert target_sites(("mlp_in.1", "mlp_out.1")) == ("transcoder.1", "mlp_in.1", "mlp_out.1")


def test_trains_from_an_activation_store(gemma3, tmp_path):
    from gsnb.saes.activations import ActivationStore, cache_activations

    tokens = torch.randint(4, 70, (8, 16))
    tokens[:, 0] = 2
    out = cache_activations(gemma3, tokens, ["resid_post.0"], tmp_path / "acts", progress=False)
    cfg = TrainConfig(d_sae=16, batch_size=32, n_tokens=6 * 32, progress=False, log_every=1)
    result = train_sae(gemma3, "resid_post.0", cfg, ActivationStore(out))
    assert result.steps == 6 and [m.step for m in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.sae.cfg.model_name == "tiny-gemma3"


def test_batches_missing_a_site_or_of_the_wrong_width_are_refused(gemma3):
    cfg = TrainConfig(d_sae=8, batch_size=4, n_tokens=8, progress=False)
    with pytest.raises(KeyError, match="lacks site 'mlp_out.1'"):
        train_sae(gemma3, "transcoder.1", cfg, [{"mlp_in.1": torch.randn(4, 32)}])
    with pytest.raises(ValueError, match="width 7 but the model's resid_post.0 has width 32"):
        train_sae(gemma3, "resid_post.0", cfg, [{"resid_post.0": torch.randn(4, 7)}])


class Interrupted(Exception):
    pass


def interrupt_after(batches, n):
    for i, batch in enumerate(batches):
        if i == n:
            raise Interrupted
        yield batch


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    _, batches = sparse_dictionary_batches(40, 128)
    sites = ["resid_post.0", ("resid_post.0", "mlp_out.0")]
    batches = [{**b, "mlp_out.0": b["resid_post.0"].flip(1)} for b in batches]
    base = dict(d_sae=24, batch_size=128, n_tokens=40 * 128, progress=False, checkpoint_every=10)
    whole = train_suite(
        None, sites, TrainConfig(**base, checkpoint_dir=str(tmp_path / "a")), batches
    )

    cfg = TrainConfig(**base, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(Interrupted):
        train_suite(None, sites, cfg, interrupt_after(batches, 25))
    latest = json.loads((tmp_path / "b" / "rank0-of-1" / "latest.json").read_text())
    assert latest["step"] == 20
    resumed = train_suite(None, sites, cfg, iter(batches))
    assert resumed.steps == 40
    for name, sae in whole.saes.items():
        for key, value in sae.state_for_save().items():
            assert torch.equal(value, resumed.saes[name].state_for_save()[key]), (name, key)
        assert whole.history[name] == resumed.history[name]
    assert len(list((tmp_path / "b" / "rank0-of-1").glob("*.safetensors"))) == 1

    other = TrainConfig(**{**base, "d_sae": 16}, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="from another run"):
        train_suite(None, sites, other, batches)


WORKER = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_train import suite_batches, SUITE_SITES, suite_config
from gsnb.saes.train import train_suite
result = train_suite(None, SUITE_SITES, suite_config(), suite_batches())
if int(__import__("os").environ["RANK"]) == 0:
    result.save({out!r})
    (__import__("pathlib").Path({out!r}) / "ranks.json").write_text(json.dumps(result.ranks))
"""

SUITE_SITES = ["resid_post.0", "mlp_out.0", "transcoder.0"]


def suite_batches():
    _, batches = sparse_dictionary_batches(12, 64, d=16)
    return [
        {
            "resid_post.0": b["resid_post.0"],
            "mlp_in.0": b["resid_post.0"] * 2,
            "mlp_out.0": b["resid_post.0"].roll(1, 1),
        }
        for b in batches
    ]


def suite_config():
    return TrainConfig(d_sae=16, batch_size=64, n_tokens=12 * 64, progress=False, log_every=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_sites_and_match_one_process(tmp_path):
    from gsnb.saes.sae import JumpReLUSAE
    from gsnb.saes.train import suite_id

    one = train_suite(None, SUITE_SITES, suite_config(), suite_batches())
    assert set(one.ranks.values()) == {0}
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out")))
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    ranks = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert ranks == {"resid_post.0": 0, "mlp_out.0": 1, "transcoder.0": 0}
    for name, sae in one.saes.items():
        got = JumpReLUSAE.load(tmp_path / "out" / suite_id(name, sae.d_sae))
        assert (got.site_in, got.site_out) == (sae.site_in, sae.site_out)
        for key, value in sae.state_for_save().items():
            torch.testing.assert_close(got.state_for_save()[key], value, rtol=1e-6, atol=1e-7)


def test_small_suite_trains_once_then_loads_from_the_cache(gemma3, tmp_path, monkeypatch):
    import gsnb.saes.suites
    from gsnb.saes.suites import small_suite

    monkeypatch.setenv("GSNB_CACHE", str(tmp_path))
    cfg = TrainConfig(d_sae=16, batch_size=64, n_tokens=6 * 64, seq_len=16, progress=False)
    first = small_suite(gemma3, kinds=("resid_post", "transcoder"), layers=[1], cfg=cfg)
    assert set(first.saes) == {"resid_post.1", "transcoder.1"}
    folders = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("suites/*/*/*"))
    assert [f.split("/", 2)[2] for f in folders] == [
        "resid_post_all/layer_1_width_16_l0_small",
        "transcoder_all/layer_1_width_16_l0_small",
    ]

    from gsnb.saes.releases import load_sae

    suite_dir = next(tmp_path.glob("suites/*"))
    loaded = load_sae(suite_dir, "transcoder_all/layer_1_width_16_l0_small")
    assert (loaded.site_in, loaded.site_out) == ("mlp_in.1", "mlp_out.1")
    assert torch.equal(loaded.W_enc, first.saes["transcoder.1"].W_enc)

    def no_training(*args, **kwargs):
        raise AssertionError("the second call must load the cached suite")

    monkeypatch.setattr(gsnb.saes.suites, "train_suite", no_training)
    again = small_suite(gemma3, kinds=("resid_post", "transcoder"), layers=[1], cfg=cfg)
    for name, sae in first.saes.items():
        assert torch.equal(again.saes[name].W_dec, sae.W_dec)
        assert again.saes[name].site_in == sae.site_in
    assert again.history == first.history


def test_suite_sites_must_be_distinct_and_known():
    with pytest.raises(ValueError, match="without repeats"):
        train_suite(None, ["resid_post.0", "resid_post.0"], TrainConfig(progress=False), [])
    with pytest.raises(ValueError, match="transcoder.3"):
        target_sites("transcoder.x")


@pytest.mark.parametrize(
    ("field", "bad", "must"),
    [
        ("batch_size", 0, "an integer >= 1"),
        ("log_every", 0, "an integer >= 1"),
        ("bandwidth", 0.0, "a number > 0"),
        ("bandwidth", float("nan"), "a number > 0"),
        ("dtype", "bfloat16", "'float32' .* or 'float64'"),
        ("dtype", torch.float32, "'float32' .* or 'float64'"),
        ("d_sae", 0, "an integer >= 1"),
        ("n_tokens", -1, "an integer >= 1"),
        ("batch_size", 4096.0, "an integer >= 1"),
        ("lr", 0.0, "None .* or a number > 0"),
        ("target_l0", -5.0, "None or a number > 0"),
        ("l0_coefficient", -1e-3, "a number >= 0"),
        ("lr_decay_fraction", 1.5, "a number from 0 to 1"),
        ("seq_len", 1, "an integer >= 2"),
        ("scale_batches", 0, "an integer >= 1"),
        ("checkpoint_every", -1, "an integer >= 0"),
        ("init_l0", 0, "None or a number > 0"),
    ],
)
def test_train_config_refuses_a_bad_value_naming_the_field_and_a_fix(field, bad, must):
    with pytest.raises(ValueError, match=rf"TrainConfig\({field}=.*\): {field} must be {must}"):
        TrainConfig(**{field: bad})
    with pytest.raises(ValueError, match=rf"pass for example TrainConfig\({field}="):
        TrainConfig(**{field: bad})


def test_train_config_keeps_its_meaningful_edge_values():
    cfg = TrainConfig(l0_coefficient=0.0, checkpoint_every=0, init_l0=None, lr=None, seq_len=2)
    assert (cfg.l0_coefficient, cfg.checkpoint_every, cfg.init_l0) == (0.0, 0, None)
    assert TrainConfig(batch_size=np.int64(64)).batch_size == 64


class ThreadBroadcast:
    """``torch.distributed.broadcast`` between threads, one thread per rank: the source's buffer
    is copied into everyone else's."""

    def __init__(self, world: int):
        import threading

        self.barrier, self.local, self.slot = threading.Barrier(world), threading.local(), None

    def broadcast(self, buf, src):
        if self.local.rank == src:
            self.slot = buf.clone()
        self.barrier.wait()
        if self.local.rank != src:
            buf.copy_(self.slot)
        self.barrier.wait()


@pytest.mark.parametrize(
    "own_place",
    [
        (torch.device("cpu"), torch.float64),
        pytest.param(
            (torch.device("cuda"), torch.float32),
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_broadcast_saes_puts_received_saes_where_the_ranks_own_are(monkeypatch, own_place):
    import threading

    import torch.distributed as dist

    from gsnb.saes.distributed import broadcast_saes
    from gsnb.saes.sae import JumpReLUSAE, SAEConfig

    fake = ThreadBroadcast(2)
    monkeypatch.setattr(dist, "broadcast", fake.broadcast)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    targets = [
        ("resid_post.0", "resid_post.0", "resid_post.0"),
        ("mlp_out.0", "mlp_out.0", "mlp_out.0"),
    ]
    ranks = {"resid_post.0": 0, "mlp_out.0": 1}
    trained = {}
    for i, (name, site, _) in enumerate(targets):
        sae = JumpReLUSAE(SAEConfig(d_in=6, d_sae=10, site_in=site, input_scale=0.5 + i))
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p))
        trained[name] = sae
    # Rank 0 keeps its SAEs at own_place; rank 1 where a new SAE is made (CPU, float32).
    own = {0: trained["resid_post.0"].to(*own_place), 1: trained["mlp_out.0"]}
    rows = {0: [[1, 2.0, 3.0, 4.0, 5.0]], 1: [[1, 6.0, 7.0, 8.0, 9.0], [2, 1.0, 1.0, 1.0, 1.0]]}
    results = {}

    def run(rank):
        fake.local.rank = rank
        name = next(n for n, r in ranks.items() if r == rank)
        results[rank] = broadcast_saes(
            targets, ranks, {name: own[rank]}, {name: rows[rank]}, "m", rank, torch.device("cpu")
        )

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    saes0, history0 = results[0]
    received = saes0["mlp_out.0"]
    assert (received.W_enc.device.type, received.W_enc.dtype) == (own_place[0].type, own_place[1])
    for key, value in trained["mlp_out.0"].state_for_save().items():
        torch.testing.assert_close(received.state_for_save()[key].cpu().float(), value.float())
    assert received.cfg.input_scale == 1.5 and received.site_in == "mlp_out.0"
    assert history0["mlp_out.0"] == rows[1]
    saes1, _ = results[1]
    assert saes1["resid_post.0"].W_enc.dtype == torch.float32  # rank 1's own place
    assert saes1["resid_post.0"].W_enc.device.type == "cpu"


@pytest.mark.parametrize(
    ("l0", "label"),
    [(3, "small"), (16, "small"), (24, "small"), (25, "medium"), (45, "medium"),
     (73, "medium"), (74, "big"), (130, "big"), (900, "big")],
)  # fmt: skip
def test_l0_labels_follow_gemma_scope_2s_ranges_split_at_their_geometric_midpoints(l0, label):
    from gsnb.saes.suite_names import l0_label

    assert l0_label(l0) == label


def test_small_suite_labels_each_sae_by_the_l0_it_reached(gemma3, tmp_path, monkeypatch):
    from gsnb.saes.releases import list_sae_ids
    from gsnb.saes.suites import small_suite

    monkeypatch.setenv("GSNB_CACHE", str(tmp_path))
    # No sparsity pressure and encoder biases at zero: about half of 256 features stay active.
    cfg = TrainConfig(
        d_sae=256,
        batch_size=64,
        n_tokens=4 * 64,
        seq_len=16,
        init_l0=None,
        l0_coefficient=0.0,
        progress=False,
    )
    suite = small_suite(gemma3, kinds=("resid_post",), layers=[1], cfg=cfg)
    tokens = torch.randint(4, 70, (4, 16))
    _, acts = gemma3.run_with_cache(tokens, ["resid_post.1"])
    l0 = (suite.saes["resid_post.1"].encode(acts["resid_post.1"][:, 1:]) > 0).sum(-1).float()
    assert l0.mean() > 90  # Gemma Scope 2's "big" range starts at 90
    assert list_sae_ids(suite.folder) == ["resid_post_all/layer_1_width_256_l0_big"]
    again = small_suite(gemma3, kinds=("resid_post",), layers=[1], cfg=cfg)  # from the cache
    assert torch.equal(again.saes["resid_post.1"].W_enc, suite.saes["resid_post.1"].W_enc)


def test_tutorial_suite_is_one_suite_of_saes_and_transcoders_that_every_call_shares(
    gemma3, tmp_path, monkeypatch
):
    import gsnb.saes.suites as suites

    monkeypatch.setenv("GSNB_CACHE", str(tmp_path))
    tiny = TrainConfig(d_sae=16, batch_size=64, n_tokens=6 * 64, seq_len=16, progress=False)
    monkeypatch.setattr(suites, "tutorial_config", lambda small=False: tiny)
    monkeypatch.setattr(suites, "TUTORIAL_LAYERS", (0, 1, 7))  # 7: beyond the tiny model's depth
    monkeypatch.setattr(suites, "WIDE_LAYER", 1)
    suite = suites.tutorial_suite(gemma3, small=True)
    layers = range(gemma3.n_layers)
    assert set(suite.saes) == {
        "resid_post.0", "resid_post.1", "attn_out.0", "attn_out.1",
        *(f"transcoder.{layer}" for layer in layers),
    }  # fmt: skip
    assert suite.steps == 6 and len(list(tmp_path.glob("suites/*"))) == 1

    # The same targets asked of small_suite by kind are the same cached suite.
    per_kind = {"resid_post": [0, 1], "attn_out": [0, 1], "transcoder": "all"}
    with monkeypatch.context() as patch:
        patch.setattr(suites, "train_suite", None)  # any training would fail
        again = suites.small_suite(gemma3, ("resid_post", "attn_out", "transcoder"), per_kind, tiny)
    assert again.folder == suite.folder and again.steps == suite.steps  # steps survive the cache
    assert again.seconds == suite.seconds > 0
    for name, sae in suite.saes.items():
        assert torch.equal(again.saes[name].W_enc, sae.W_enc)
    with pytest.raises(ValueError, match="layers is given for kinds"):
        suites.small_suite(gemma3, ("resid_post", "attn_out"), {"resid_post": [0]}, tiny)

    wide = suites.tutorial_suite(gemma3, small=True, wide=True)
    assert list(wide.saes) == ["resid_post.1"] and wide.saes["resid_post.1"].d_sae == 4 * 16
    # another seed, so a wide feature cannot resemble a narrow one through a shared start
    seeds = [
        json.loads((s.folder / "suite.json").read_text())["spec"]["cfg"]["seed"]
        for s in (suite, wide)
    ]
    assert seeds == [tiny.seed, tiny.seed + 1]
