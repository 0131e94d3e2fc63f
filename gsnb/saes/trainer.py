"""SAETrainer: one SAE's parameters and Adam state during training, and the recipe's step.

The step's loss and gradients are :func:`gsnb.saes.jumprelu.loss_and_grads`; this module keeps
the decoder rows on the unit sphere and the thresholds non-negative around each Adam step, and
turns the trained parameters (in scaled units) into a :class:`gsnb.JumpReLUSAE` on raw ones.
"""

from __future__ import annotations

import torch

from gsnb.saes.jumprelu import Params, StepStats, loss_and_grads
from gsnb.saes.sae import JumpReLUSAE, SAEConfig


class SAETrainer:
    """One SAE's parameters and Adam state during training, in scaled units.

    Initialisation (seeded by ``seed``): decoder rows random and of unit norm, the encoder their
    transpose (random unit rows when input and output widths differ), zero biases, thresholds at
    ``threshold_init``. Adam has beta1 = 0, beta2 = 0.999.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        d_sae: int,
        threshold_init: float,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        gen = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_out, generator=gen, dtype=torch.float64)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_encT = W_dec.clone()
        if d_in != d_out:
            W_encT = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
            W_encT /= W_encT.norm(dim=1, keepdim=True)
        tensors = [
            W_encT,
            torch.zeros(d_sae),
            W_dec,
            torch.zeros(d_out),
            torch.full((d_sae,), threshold_init),
        ]
        self.p = Params(*(torch.nn.Parameter(t.to(device, dtype)) for t in tensors))
        self.opt = torch.optim.Adam(
            self.p.tensors(),
            lr=1.0,
            betas=(0.0, 0.999),
            eps=1e-8,
            fused=device.type in ("cpu", "cuda"),
        )

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lr: float,
        bandwidth: float,
        coefficient: float,
        target_l0: float | None,
        sparse: bool | None,
    ) -> StepStats:
        """One Adam step on ``x [batch, d_in]`` -> ``y [batch, d_out]`` (scaled units)."""
        stats, grads = loss_and_grads(self.p, x, y, bandwidth, coefficient, target_l0, sparse)
        # Keep decoder rows on the unit sphere: drop the gradient's radial part, renormalise after.
        radial = torch.linalg.vecdot(grads.W_dec, self.p.W_dec)  # [d_sae]
        grads.W_dec.addcmul_(radial[:, None], self.p.W_dec, value=-1.0)
        for param, grad in zip(self.p.tensors(), grads.tensors(), strict=True):
            param.grad = grad
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.p.W_dec.div_(self.p.W_dec.norm(dim=1, keepdim=True))
        # Below zero the SAE's ReLU, which the training loss does not model, would act.
        self.p.threshold.clamp_(min=0.0)
        return stats

    def to_sae(self, cfg: SAEConfig, scale_in: float, scale_out: float) -> JumpReLUSAE:
        """The SAE on raw activations (trained on ``x * scale_in`` -> ``y * scale_out``).

        Pre-activations, thresholds and the output bias are divided by ``scale_out``, so the
        decoder rows stay unit vectors and feature activations are in raw output units.
        """
        p, sae = self.p, JumpReLUSAE(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(p.W_encT.T.double() * (scale_in / scale_out))
            sae.b_enc.copy_(p.b_enc.double() / scale_out)
            sae.W_dec.copy_(p.W_dec)
            sae.b_dec.copy_(p.b_dec.double() / scale_out)
            sae.threshold.copy_(p.threshold.double() / scale_out)
        return sae

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and Adam state as named CPU tensors (for safetensors)."""
        out = {}
        for name, t in zip(Params.NAMES, self.p.tensors(), strict=True):
            out[name] = t.detach()
            out.update({f"adam.{k}.{name}": v for k, v in self.opt.state[t].items()})
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` gave."""
        with torch.no_grad():
            for name, t in zip(Params.NAMES, self.p.tensors(), strict=True):
                t.copy_(state[name])
                adam = {
                    k.split(".")[1]: v
                    for k, v in state.items()
                    if k.startswith("adam.") and k.endswith(f".{name}")
                }
                self.opt.state[t] = {k: v.to(t.device) for k, v in adam.items()}
