"""gsnb.saes.activations: shards against direct run_with_cache values, resume, validation, batching."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import VOCAB, tiny_model

from gsnb.core.files import AtomicFile
from gsnb.saes.activations import ActivationStore, cache_activations

SITES = ["embed", "attn_out.1", "mlp_in.1", "mlp_out.1", "resid_post.2"]
N_WINDOWS, SEQ = 10, 12


def make_tokens(seed: int = 0) -> torch.Tensor:
    """``[10, 12]`` windows: BOS first, random words, a few EOS inside."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, len(VOCAB), (N_WINDOWS, SEQ), generator=g)
    tokens[:, 0] = 2
    tokens[::3, 5] = 1
    return tokens


def run(model, out, **kw):
    tokens = kw.pop("tokens", None)
    # float32 unless a test says otherwise: most tests compare values at float32 precision.
    args = dict(batch_size=3, shard_windows=4, progress=False, dtype=torch.float32) | kw
    return cache_activations(model, make_tokens() if tokens is None else tokens, SITES, out, **args)


def file_bytes(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def row_indices(batch, full):
    """Index in ``full`` [N, d] of each row of ``batch`` [b, d]; rows that occur several times in
    ``full`` (every window's BOS row is the same vector) map to their first occurrence."""
    matches = (batch[:, None, :] == full[None, :, :]).all(-1)
    assert matches.any(1).all()
    return matches.float().argmax(1)  # argmax returns the first of equal maxima


def nearest_rows(batch, full):
    """Like :func:`row_indices` for values equal up to rounding: ``(index, distance)``."""
    dist = torch.cdist(batch, full, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = dist.min(1)
    return row_indices(full[nearest.indices], full), nearest.values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shards_equal_run_with_cache_values(model, tmp_path, dtype):
    """float32 shards hand over the forward pass's own tensors; bfloat16 ones go through the
    reused host buffers (pinned on CUDA). Both must hold exactly a plain forward's values."""
    tokens = make_tokens()
    out = run(model, tmp_path / "c", tokens=tokens, dtype=dtype)
    # The cache's batches of 3 windows: the same arithmetic, so the values agree bit for bit.
    batches = [model.run_with_cache(tokens[b0 : b0 + 3], SITES)[1] for b0 in range(0, N_WINDOWS, 3)]
    direct = {s: torch.cat([b[s] for b in batches]) for s in SITES}
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["sites"] == SITES
        and manifest["n_shards"] == 3
        and manifest["finished"] == [0, 1, 2]
    )
    assert manifest["widths"] == {s: model.site_width(s) for s in SITES}
    for site in SITES:
        # Read with the safetensors library itself: our writer must produce standard files.
        shards = [load_file(out / site / f"shard_{i:05d}.safetensors")["acts"] for i in range(3)]
        assert [s.shape[0] for s in shards] == [4 * SEQ, 4 * SEQ, 2 * SEQ]
        expected = direct[site].reshape(-1, model.site_width(site)).to(dtype)
        assert torch.equal(torch.cat(shards), expected)
    assert torch.equal(load_file(out / "tokens.safetensors")["tokens"], tokens)


def test_bf16_storage_is_the_default_and_rounds_the_float32_values(gemma3, tmp_path):
    out = cache_activations(gemma3, make_tokens(), SITES, tmp_path / "c", progress=False)
    store = ActivationStore(out)
    _, direct = gemma3.run_with_cache(make_tokens(), ["mlp_out.1"])
    loaded = store.load("mlp_out.1")
    assert loaded.dtype == torch.bfloat16 and store.dtype == torch.bfloat16
    torch.testing.assert_close(
        loaded.float(), direct["mlp_out.1"].reshape(-1, 32), rtol=1e-2, atol=1e-2
    )
    assert next(store.batches("mlp_out.1", 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("crash_in", ["writer", "forward"])
def test_interrupted_run_resumes_to_bit_identical_files(
    gemma3, tmp_path, monkeypatch, crash_in, dtype
):
    reference = run(gemma3, tmp_path / "reference", dtype=dtype)
    calls = {"n": 0}
    if crash_in == "writer":
        real = AtomicFile.commit

        def flaky(f):  # shard 0 whole, shard 1 only for the sites before mlp_in.1
            if f.target.name == "shard_00001.safetensors" and f.target.parent.name == "mlp_in.1":
                raise RuntimeError("simulated crash")
            return real(f)

        monkeypatch.setattr(AtomicFile, "commit", flaky)
    else:
        real = gemma3.run_with_cache

        def flaky(*args, **kw):  # batches 0-2 cover windows 0-8: shards 0 and 1 complete
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("simulated crash")
            return real(*args, **kw)

        monkeypatch.setattr(gemma3, "run_with_cache", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(gemma3, tmp_path / "resumed", dtype=dtype)
    finished = json.loads((tmp_path / "resumed" / "manifest.json").read_text())["finished"]
    assert finished == ([0] if crash_in == "writer" else [0, 1])
    monkeypatch.undo()
    assert not list((tmp_path / "resumed").rglob(".*.gsnb-tmp"))  # unfinished files were removed
    (tmp_path / "resumed" / "mlp_in.1" / ".shard_00002.safetensors.99.gsnb-tmp").write_bytes(b"x")

    forwards = []
    real_forward = gemma3.run_with_cache
    monkeypatch.setattr(
        gemma3,
        "run_with_cache",
        lambda t, *a, **k: forwards.append(len(t)) or real_forward(t, *a, **k),
    )
    run(gemma3, tmp_path / "resumed", dtype=dtype)
    # Only batches touching unfinished shards run again (batches of 3 windows, shards of 4).
    assert forwards == ([3, 3, 1] if crash_in == "writer" else [3, 1])
    assert file_bytes(tmp_path / "resumed") == file_bytes(reference)
    forwards.clear()
    run(gemma3, tmp_path / "resumed", dtype=dtype)  # a finished cache: nothing to compute
    assert forwards == [] and file_bytes(tmp_path / "resumed") == file_bytes(reference)


def test_different_arguments_into_an_existing_cache_are_refused(gemma3, tmp_path):
    out = run(gemma3, tmp_path / "c")
    before = file_bytes(out)
    other_model = tiny_model("gemma3", seed=1)  # same name, other weights
    cases = [
        (dict(dtype=torch.bfloat16), "dtype: 'float32' in the cache, 'bfloat16' now"),
        (dict(tokens=make_tokens(seed=1)), "tokens_sha256"),
        (dict(shard_windows=5), "shard_windows: 4 in the cache, 5 now"),
    ]
    for kw, what in cases:
        with pytest.raises(ValueError, match=f"different arguments \\(.*{what}.*use a new out_dir"):
            run(gemma3, out, **kw)
    with pytest.raises(ValueError, match="sites: .*use a new out_dir"):
        cache_activations(gemma3, make_tokens(), ["mlp_in.1"], out, shard_windows=4)
    with pytest.raises(ValueError, match="model_fingerprint"):
        run(other_model, out)
    assert file_bytes(out) == before  # nothing cached was touched


def test_a_folder_that_is_not_a_cache_is_refused(gemma3, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no manifest.json.*new or empty out_dir"):
        run(gemma3, tmp_path)


def test_store_rejects_foreign_damaged_and_unfinished_caches(gemma3, tmp_path):
    out = run(gemma3, tmp_path / "c")
    shard = out / "mlp_in.1" / "shard_00001.safetensors"
    good = shard.read_bytes()

    (out / "mlp_in.1" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: a foreign file in the cache.*move it out"):
        ActivationStore(out)
    (out / "mlp_in.1" / "notes.txt").unlink()

    bad_files = [
        (b"\x00" * 64, "shard_00001.safetensors: not a safetensors file.*delete it and rerun"),
        (good[:-100], "shard_00001.safetensors: its size disagrees with its header"),
    ]
    for content, match in bad_files:
        shard.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            ActivationStore(out)
    save_file({"acts": torch.zeros(3, 32)}, str(shard))
    with pytest.raises(
        ValueError, match=r"'acts' is F32 \[3, 32\], the manifest says torch.float32 \[48, 32\]"
    ):
        ActivationStore(out)
    # Same shape and dtype, but from a cache of other tokens: caught by its metadata.
    other = run(gemma3, tmp_path / "other", tokens=make_tokens(seed=1))
    shard.write_bytes((other / "mlp_in.1" / "shard_00001.safetensors").read_bytes())
    with pytest.raises(ValueError, match="its metadata .* disagrees with the manifest"):
        ActivationStore(out)
    shard.unlink()
    with pytest.raises(ValueError, match="the shard is missing"):
        ActivationStore(out)
    shard.write_bytes(good)
    ActivationStore(out)

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"finished": [0]}))
    with pytest.raises(ValueError, match=r"unfinished \(1 of 3 shards\): rerun cache_activations"):
        ActivationStore(out)
    with pytest.raises(ValueError, match="not a gsnb activation cache"):
        ActivationStore(tmp_path)


def test_batches_visit_every_row_once_per_epoch_in_a_seeded_order(gemma3, tmp_path):
    store = ActivationStore(run(gemma3, tmp_path / "c"), buffer_bytes=2 * 4 * SEQ * 32 * 4)
    full = store.load("resid_post.2")
    assert store.n_tokens == full.shape[0] == N_WINDOWS * SEQ and store.width("resid_post.2") == 32

    def epochs(seed, **kw):
        batches = list(store.batches("resid_post.2", 7, seed=seed, epochs=2, **kw))
        return batches, torch.cat([row_indices(b, full) for b in batches])

    batches, order = epochs(0, drop_special=False)
    assert [len(b) for b in batches] == [7] * 17 + [1] + [7] * 17 + [1]
    every_row = row_indices(full, full).sort().values  # 0..119 with the BOS rows all mapped to 0
    first, second = order[:120], order[120:]
    assert torch.equal(first.sort().values, every_row)
    assert torch.equal(second.sort().values, every_row)
    assert not torch.equal(first, second)
    assert torch.equal(epochs(0, drop_special=False)[1], order)
    assert not torch.equal(epochs(1, drop_special=False)[1], order)

    kept = torch.nonzero(~torch.isin(make_tokens().reshape(-1), torch.tensor([0, 1, 2])))[:, 0]
    _, order = epochs(0)  # special tokens dropped by default
    assert len(order) == 2 * len(kept)
    assert torch.equal(order[: len(kept)].sort().values, kept)


def test_batches_multi_keep_rows_aligned_across_sites(gemma3, tmp_path):
    store = ActivationStore(run(gemma3, tmp_path / "c"))
    layer = gemma3.text_model.layers[1]
    full_in = store.load("mlp_in.1")
    for batch in store.batches_multi(["mlp_in.1", "mlp_out.1"], 16, seed=3):
        # mlp_out is post_feedforward_layernorm(mlp(mlp_in)) of the same token.
        with torch.no_grad():
            expected = layer.post_feedforward_layernorm(layer.mlp(batch["mlp_in.1"]))
        torch.testing.assert_close(batch["mlp_out.1"], expected, rtol=1e-4, atol=1e-5)
        row_indices(batch["mlp_in.1"], full_in)


def test_stream_store_gives_the_cached_rows_without_disk(model, tmp_path):
    disk = ActivationStore(run(model, tmp_path / "c"))
    stream = ActivationStore.stream(
        model, make_tokens(), ["mlp_out.1", "mlp_in.1"], batch_size=3, buffer_windows=4
    )
    assert stream.sites == ["mlp_in.1", "mlp_out.1"] and stream.n_tokens == disk.n_tokens
    batches = list(stream.batches_multi(["mlp_in.1", "mlp_out.1"], 16, seed=0, drop_special=False))
    assert [len(b["mlp_in.1"]) for b in batches] == [16] * 7 + [8]
    got = {s: torch.cat([b[s] for b in batches]) for s in stream.sites}
    idx = {}
    for site in stream.sites:
        full = disk.load(site)
        idx[site], dist = nearest_rows(got[site], full)
        assert dist.max() < 1e-4  # the same values up to batch-size rounding
        assert torch.equal(idx[site].sort().values, row_indices(full, full).sort().values)
    assert torch.equal(idx["mlp_in.1"], idx["mlp_out.1"])  # rows stay aligned across sites
    with pytest.raises(KeyError, match="'resid_post.2' is not in this store"):
        next(stream.batches("resid_post.2", 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streamed_shards_read_back_identically_through_the_safetensors_library(tmp_path, dtype):
    from safetensors import safe_open

    from gsnb.saes.activation_files import ShardSpec, ShardWriter, read_into, write_tensor

    widths = {"mlp_in.1": 5, "mlp_out.1": 3}
    for site in widths:
        (tmp_path / site).mkdir()
    rows = {s: torch.randn(7, w).to(dtype) for s, w in widths.items()}
    done = []
    writer = ShardWriter(ShardSpec(tmp_path, widths, dtype, {"format": "test"}), done.append)
    try:  # shard 0 in three appends of 2, 4 and 1 rows
        for r0, r1 in [(0, 2), (2, 6), (6, 7)]:
            writer.submit(0, 7, {s: v[r0:r1] for s, v in rows.items()}, last=r1 == 7)
        writer.drain()
    finally:
        writer.close()
    assert done == [0]
    for site, expected in rows.items():
        path = tmp_path / site / "shard_00000.safetensors"
        assert torch.equal(load_file(path)["acts"], expected)
        with safe_open(path, "pt") as f:
            assert f.keys() == ["acts"] and torch.equal(f.get_tensor("acts"), expected)
            assert f.metadata() == {"format": "test", "shard": "0", "site": site}
        into = torch.empty_like(expected)
        read_into(path, into, "acts")
        assert torch.equal(into, expected)
    assert not list(tmp_path.rglob(".*"))  # no temporary file is left

    tokens = torch.randint(0, 2**40, (3, 4))
    write_tensor(tmp_path / "tokens.safetensors", "tokens", tokens, {"k": "v"})
    assert torch.equal(load_file(tmp_path / "tokens.safetensors")["tokens"], tokens)


def test_host_copies_reuse_their_buffers_and_hand_over_tensors_already_in_the_dtype():
    from gsnb.saes.host_copies import HostCopies

    widths = {"mlp_in.1": 5, "mlp_out.1": 3}
    acts = {s: torch.randn(2, 4, w) for s, w in widths.items()}
    same = HostCopies(widths, torch.float32, "cpu", batch_size=2, seq_len=4, slots=1).stage(acts)
    assert all(same.host[s] is acts[s] for s in widths)  # no copy at all

    copies = HostCopies(widths, torch.bfloat16, "cpu", batch_size=2, seq_len=4, slots=1)
    first = copies.stage(acts)
    first.wait()
    assert all(torch.equal(first.host[s], acts[s].to(torch.bfloat16)) for s in widths)
    pointers = {s: first.host[s].data_ptr() for s in widths}
    first.release()
    short = {s: a[:1] * 2 for s, a in acts.items()}  # a last batch may be shorter
    second = copies.stage(short)
    second.wait()
    assert {s: second.host[s].data_ptr() for s in widths} == pointers  # the same buffers again
    assert all(torch.equal(second.host[s], short[s].to(torch.bfloat16)) for s in widths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_copies_on_cuda_are_pinned_and_equal_the_device_values():
    from gsnb.saes.host_copies import HostCopies

    widths = {"resid_post.0": 64}
    copies = HostCopies(widths, torch.bfloat16, "cuda", batch_size=4, seq_len=8, slots=2)
    for _ in range(3):  # more batches than slots: released buffers serve the next one
        device = {"resid_post.0": torch.randn(4, 8, 64, device="cuda") * 3}
        expected = device["resid_post.0"].to(torch.bfloat16).cpu()
        batch = copies.stage(device)
        del device  # its memory must not be reused before the copy has read it
        batch.wait()
        host = batch.host["resid_post.0"]
        assert host.is_pinned() and torch.equal(host, expected)
        batch.release()
