"""Loading SAEs and CLTs in bfloat16: every tensor goes straight from the file into the result,
with no float32 copy of the file, of the SAE or of one of its tensors."""

from __future__ import annotations

import torch
from test_circuits import random_clt
from tiny import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

import gsnb
from gsnb.core import tensor_files
from gsnb.saes.clt import CrossLayerTranscoder
from gsnb.saes.sae import JumpReLUSAE, SAEConfig


class Float32Watch(TorchDispatchMode):
    """The largest float32 tensor (in elements) that an operation other than a view reads or
    makes. Views (of a memory-mapped file, say) cost nothing until something copies them;
    tensors on the meta device hold no memory."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in args if isinstance(t, torch.Tensor) and not t.is_meta]
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out])]
        outs = [t for t in outs if isinstance(t, torch.Tensor) and not t.is_meta]
        storages = {t.untyped_storage().data_ptr() for t in ins}
        if outs and all(t.untyped_storage().data_ptr() in storages for t in outs):
            if str(func) != "aten.copy_.default":  # copy_ writes into its input: not a view
                return out
        for t in ins + outs:
            if t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def random_sae(d_in=64, d_sae=512) -> JumpReLUSAE:
    sae = JumpReLUSAE(SAEConfig(d_in=d_in, d_sae=d_sae, site_in="resid_post.1"))
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_()
    return sae


def test_a_bfloat16_file_loads_into_bfloat16_without_any_float32_tensor(tmp_path):
    sae = random_sae().to(torch.bfloat16)
    sae.save(tmp_path / "resid_post_all" / "layer_1_width_512_l0_small")
    watch = Float32Watch()
    with watch:
        back = gsnb.load_sae(
            tmp_path,
            "resid_post_all/layer_1_width_512_l0_small",
            device="cpu",
            dtype=torch.bfloat16,
        )
    assert watch.largest == 0
    for name, param in sae.named_parameters():
        assert getattr(back, name).dtype == torch.bfloat16
        assert torch.equal(getattr(back, name), param), name


def test_a_float32_file_is_converted_a_slice_at_a_time(tmp_path, monkeypatch):
    sae = random_sae()
    sae.save(tmp_path / "resid_post_all" / "layer_1_width_512_l0_small")
    monkeypatch.setattr(tensor_files, "CHUNK_BYTES", 4096)  # 1024 float32 numbers
    watch = Float32Watch()
    with watch:
        back = gsnb.load_sae(
            tmp_path,
            "resid_post_all/layer_1_width_512_l0_small",
            device="cpu",
            dtype=torch.bfloat16,
        )
    assert 0 < watch.largest <= 1024 < sae.W_enc.numel()
    for name, param in sae.named_parameters():
        assert torch.equal(getattr(back, name), param.detach().bfloat16()), name


def test_a_clt_loads_into_bfloat16_a_slice_at_a_time(tmp_path, monkeypatch):
    model = tiny_model("gemma3")
    clt = random_clt(model, d_sae=64)
    folder = clt.save(tmp_path / "clt")
    monkeypatch.setattr(tensor_files, "CHUNK_BYTES", 4096)
    for lazy in (False, True):
        watch = Float32Watch()
        with watch:
            back = CrossLayerTranscoder.load(
                folder, progress=False, dtype=torch.bfloat16, lazy=lazy
            )
            decoders = [back.W_dec[s] for s in range(back.n_layers)]
        assert 0 < watch.largest <= 1024 < clt.W_dec[0].numel()
        assert back.W_enc.dtype == torch.bfloat16
        torch.testing.assert_close(back.W_enc, clt.W_enc.bfloat16(), rtol=0, atol=0)
        for s, dec in enumerate(decoders):
            torch.testing.assert_close(dec, clt.W_dec[s].bfloat16(), rtol=0, atol=0)
