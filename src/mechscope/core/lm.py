"""`LanguageModel`: a loaded Hugging Face model with capture, intervention, forward and generate.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")  # a bundled organism; a local folder or a hub id load the same way
    >>> with lm.capture(["resid_post.*"], positions="last") as cache:
    ...     logits = lm.forward(["The capital of France is", "Two plus two is"])
    >>> list(cache), cache["resid_post.0"].shape
    (['resid_post.0', 'resid_post.1', 'resid_post.2', 'resid_post.3'], torch.Size([2, 128]))
    >>> lm.generate("The capital of France is", max_new_tokens=1)  # a string in, a string out
    ' Paris'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, overload

import torch
from torch import Tensor, nn

from mechscope.core.bulk import check_prompts
from mechscope.core.capture import Capture, CapturePlan, Sink, plan_capture
from mechscope.core.hooks import PassTracker
from mechscope.core.intervene import Intervention, OpSpec, plan
from mechscope.core.positions import Positions
from mechscope.core.sites import Site, expand_sites
from mechscope.errors import InputError
from mechscope.models.archmap import ModelMap
from mechscope.models.loading import LoadedModel, _prepare_tokenizer, load_model, resolve_dtype, wrap_model

Inputs = str | Sequence[str] | Tensor | Mapping[str, Tensor]


class LanguageModel:
    """A model, its tokenizer and its `ModelMap`, with the operations every analysis builds on.

    Attributes:
        model: the transformers model itself (hooks go on its own modules).
        tokenizer: its tokenizer, with a pad token and the padding side set for batching. A model loaded
            from a folder without tokenizer files has none: it takes token ids, and text raises `InputError`.
        arch: the architecture map (dimensions and where each part lives).
        source: the folder or hub id it was loaded from (for a wrapped model: its ``name_or_path``, else
            its class name).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> lm.arch.family, lm.arch.n_layers, lm.arch.d_model
        ('llama', 4, 128)
        >>> [str(site) for site in lm.sites("head_out.1.*")]
        ['head_out.1.0', 'head_out.1.1', 'head_out.1.2', 'head_out.1.3']
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.model: nn.Module = loaded.model
        self._tokenizer: Any = loaded.tokenizer
        self.arch: ModelMap = loaded.arch
        self.source = loaded.source
        self._tracker = PassTracker(self.model)
        self._device = _input_device(self.arch)
        self._site_memo: dict[tuple[str | Site, ...], list[Site]] = {}
        self._plan_memo: dict[tuple[str | Site, ...], CapturePlan] = {}
        self._token_text_memo: dict[int, str] = {}  # id -> text, for the tokenizer set now

    def __repr__(self) -> str:
        a = self.arch
        extra = "" if self._tokenizer is not None else ", no tokenizer"
        return f"LanguageModel({self.source!r}, family={a.family}, layers={a.n_layers}, d_model={a.d_model}{extra})"

    @property
    def tokenizer(self) -> Any:
        """The tokenizer; raises `InputError` (one line: how to give one) when the model has none."""
        if self._tokenizer is None:
            raise InputError(
                f"{self.source} has no tokenizer, so text input needs one: pass it with "
                "ms.wrap(lm.model, tokenizer) or put its tokenizer files in the model folder; "
                "token ids work without one"
            )
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        if tokenizer is not None:
            _prepare_tokenizer(tokenizer, self.arch)
        self._tokenizer = tokenizer
        self._token_text_memo = {}

    @property
    def has_tokenizer(self) -> bool:
        """Whether the model has a tokenizer (without one it takes token ids only)."""
        return self._tokenizer is not None

    @property
    def device(self) -> torch.device:
        """Where the input embedding computes (where inputs go); see `execution_device`."""
        return self._device

    def to(self, device: str | torch.device) -> LanguageModel:
        """Move the model to ``device`` (use this rather than ``lm.model.to`` so inputs follow)."""
        self.model.to(device)
        self._device = _input_device(self.arch)
        return self

    @property
    def max_length(self) -> int | None:
        """The longest input the model's positions allow, if its config says."""
        config = self.model.config
        value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(value) if value else None

    def sites(self, patterns: str | Site | Sequence[str | Site]) -> list[Site]:
        """Expand site patterns (``"resid_post.*"``) into concrete sites, validated for this model.

        Examples:
            >>> import mechscope as ms
            >>> [str(site) for site in ms.load("toy").sites(["resid_post.*", "attn_out.0"])]
            ['resid_post.0', 'resid_post.1', 'resid_post.2', 'resid_post.3', 'attn_out.0']
        """
        key = (patterns,) if isinstance(patterns, str | Site) else tuple(patterns)
        sites = self._site_memo.get(key)
        if sites is None:
            sites = expand_sites(list(key), self.arch)
            if len(self._site_memo) < 1024:  # sweeps reuse a few site lists; never grow without bound
                self._site_memo[key] = sites
        return list(sites)

    # ----------------------------------------------------------------- inputs

    def token_id(self, text: str, *, first: bool = False) -> int:
        """The id of the single token ``text`` (with its leading space, e.g. ``" Paris"``).

        Args:
            first: accept a text of several tokens and use its first token, with a warning (tracking a
                word in the lens); by default several tokens are an error.

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> lm.token_texts([lm.token_id(" Paris")])
            [' Paris']

        Raises:
            InputError: ``text`` tokenizes to nothing, or to several tokens without ``first``.
        """
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"{text!r} tokenizes to nothing; give a token such as ' Paris'")
        if len(ids) > 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            if not first:
                raise InputError(
                    f"{text!r} is {len(ids)} tokens {pieces}; this needs single tokens (often with a leading space)"
                )
            warnings.warn(f"{text!r} is {len(ids)} tokens; using its first token {pieces[0]!r}", stacklevel=2)
        return int(ids[0])

    def token_texts(self, ids: Tensor | Sequence[int]) -> list[str]:
        """The text of each token id (for tables and reports; whitespace kept as is)."""
        values = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        memo = self._token_text_memo  # a token's text never changes: monitoring and reports decode each id once
        for i in dict.fromkeys(values):
            if i not in memo:
                memo[i] = str(self.tokenizer.decode([i]))
        return [memo[i] for i in values]

    def tokenize(self, prompts: str | Sequence[str]) -> dict[str, Tensor]:
        """Tokenize and pad a batch (left for decoders, right for encoders), on the model's device.

        Examples:
            >>> import mechscope as ms
            >>> batch = ms.load("toy").tokenize(["The capital of France is", "Hi"])
            >>> batch["attention_mask"].tolist()  # a decoder pads on the left
            [[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]]

        Raises:
            InputError: no prompts, an empty prompt, or a prompt longer than the model's context.
        """
        batch = check_prompts([prompts] if isinstance(prompts, str) else prompts)
        encoded = self.tokenizer(batch, return_tensors="pt", padding=True)
        lengths = encoded["attention_mask"].sum(dim=1)
        if bool((lengths == 0).any()):
            raise InputError(f"prompt {int((lengths == 0).nonzero()[0, 0])} tokenizes to nothing")
        limit = self.max_length
        if limit is not None and encoded["input_ids"].shape[1] > limit:
            longest = int(lengths.argmax())
            raise InputError(f"prompt {longest} has {int(lengths[longest])} tokens; the model takes at most {limit}")
        keep = ("input_ids", "attention_mask")
        return {k: v.to(self.device) for k, v in encoded.items() if k in keep}

    def encode(self, inputs: Inputs) -> dict[str, Tensor]:
        """The keyword arguments `forward` passes to the model for ``inputs``.

        Prompts are tokenized and padded; a left-padded decoder batch (prompts, or a tokenizer output
        without ``position_ids``) also gets ``position_ids`` that count from each prompt's first real
        token, so padding never changes a prompt's result.
        """
        if isinstance(inputs, Tensor):
            ids = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
            if ids.dim() != 2 or ids.is_floating_point():
                raise InputError("a tensor input must be token ids shaped [batch, pos] or [pos]")
            return {"input_ids": ids.to(self.device)}
        if isinstance(inputs, Mapping):
            keep = ("input_ids", "attention_mask", "position_ids")
            encoded = {k: v.to(self.device) for k, v in inputs.items() if k in keep}
        else:
            encoded = self.tokenize(inputs)
        mask = encoded.get("attention_mask")
        if self.arch.kind == "decoder" and mask is not None and "position_ids" not in encoded and not bool(mask.all()):
            # Left padding must not shift positions: each prompt counts from its first real token.
            encoded["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return encoded

    # ----------------------------------------------------------------- running

    def forward(self, inputs: Inputs, *, grad: bool = False) -> Tensor:
        """Run one forward pass; returns logits ``[batch, pos, vocab]`` (encoders: last hidden state).

        Args:
            inputs: a prompt, a list of prompts (padded as a batch), token ids, or a tokenizer output.
            grad: keep the autograd graph (for gradient-based analyses).

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> logits = lm.forward("The capital of France is")
            >>> logits.shape, lm.token_texts([int(logits[0, -1].argmax())])
            (torch.Size([1, 7, 2054]), [' Paris'])
        """
        kwargs = self.encode(inputs)
        with torch.set_grad_enabled(grad):
            output = self.model(**kwargs)
        logits = getattr(output, "logits", None)
        result: Tensor = logits if logits is not None else output.last_hidden_state
        return result

    def forward_batches(
        self,
        prompts: Sequence[str],
        *,
        batch_size: int = 64,
        max_tokens: int | None = None,
        progress: bool = False,
    ) -> int:
        """Run every prompt through the model in batches; returns the number of batches.

        This is the bulk path behind a capture ``sink``: it streams the activations of any number of
        prompts in bounded memory. Prompts are bucketed by length (sorted within windows of
        ``16 * batch_size`` prompts) and packed into batches of at most ``batch_size`` prompts and at
        most ``max_tokens`` padded tokens, whenever every open capture yields one row per prompt
        (``positions`` ``"last"``, ``"mean"`` or an int, no attention pattern): such a capture then
        receives each window's rows back in the caller's order, ``info.rows`` naming the prompts.
        Captures that keep a position axis make the batches run in the caller's order instead. Logits
        are not returned (nothing of a finished batch is kept); use `forward` to get them.

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> rows = []
            >>> with lm.capture(["resid_post.1"], positions="mean", sink=lambda v, info: rows.append(info.rows)):
            ...     lm.forward_batches(["a b c", "a", "a b"], batch_size=2)
            2
            >>> rows[0].tolist()
            [0, 1, 2]
        """
        from mechscope.core.bulk import forward_batches

        return forward_batches(self, prompts, batch_size=batch_size, max_tokens=max_tokens, progress=progress)

    @overload
    def generate(self, prompts: str, *, max_new_tokens: int = ..., **kwargs: Any) -> str: ...

    @overload
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = ..., **kwargs: Any) -> list[str]: ...

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int = 20, **kwargs: Any) -> str | list[str]:
        """Generate continuations (greedy unless ``do_sample=True`` is passed); returns the new text.

        Interventions active around the call apply to every step, the prompt pass and each new token.

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> lm.generate(["The capital of France is", "The capital of Japan is"], max_new_tokens=2)
            [' Paris.', ' Tokyo.']
            >>> with lm.intervene({"head_out.0.0": ms.ops.zero()}):  # the planted previous-token head
            ...     lm.generate("The capital of France is", max_new_tokens=1)
            ' Lisbon'
        """
        if self.arch.kind != "decoder":
            raise InputError(f"{self.arch.family} is an encoder; it cannot generate text")
        encoded = self.tokenize(prompts)
        options: dict[str, Any] = {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id}
        options.update(kwargs)
        self._tracker.begin_generation()
        self._tracker.prompt_mask = encoded["attention_mask"]
        try:
            with torch.no_grad():
                output = self.model.generate(  # type: ignore[operator]
                    **encoded, max_new_tokens=max_new_tokens, **options
                )
        finally:
            self._tracker.end_generation()
            self._tracker.prompt_mask = None
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        texts: list[str] = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return texts[0] if isinstance(prompts, str) else texts

    # ----------------------------------------------------------------- hooks

    def capture(
        self,
        sites: str | Sequence[str | Site],
        *,
        positions: Positions = "all",
        to: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        sink: Sink | None = None,
        keep_grad: bool = False,
    ) -> Capture:
        """Capture activations at ``sites`` for every forward pass inside the ``with`` block.

        Args:
            sites: site strings with wildcards (``"resid_post.*"``, ``"head_out.5.2"``).
            positions: ``"all"``, ``"last"``, ``"mean"``, ints, a slice or a per-prompt tensor, in each
                prompt's own coordinates (padding never shifts them).
            to: device to move captures to (e.g. ``"cpu"``); default: stay where computed.
            dtype: cast captures (e.g. ``"float16"``).
            sink: ``sink(values, info)`` called once per pass instead of keeping values in the cache. A sink
                object with ``needs_info = False`` never reads ``info`` (reading it raises): the capture then
                skips tracking each pass's layout, and calls the sink for a pass as soon as its one site
                fires, or (several sites) when the next pass starts and for the last when the block exits
                (with ``positions="all"`` only; other positions need the layout).
            keep_grad: keep the live activations (not detached copies), part of the autograd graph of
                ``lm.forward(..., grad=True)``, so that ``torch.autograd.grad(metric, cache[site])`` works.
                Only with ``positions="all"``.

        Capturing ``attn_pattern`` switches a non-eager model to eager attention for the duration of
        the block, because sdpa and flash attention never form the pattern; the switch is undone on exit.

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> with lm.capture(["attn_pattern.1", "resid_post.3"], positions="all") as cache:
            ...     _ = lm.forward("The capital of France is")
            >>> cache["attn_pattern.1"].shape, cache["resid_post.3"].shape  # [batch, head, query, key]
            (torch.Size([1, 4, 7, 7]), torch.Size([1, 7, 128]))
        """
        resolved = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
        if isinstance(resolved, str):
            resolved = None
        key = (sites,) if isinstance(sites, str | Site) else tuple(sites)
        plan = self._plan_memo.get(key)
        if plan is None:
            plan = plan_capture(self.sites(list(key)), self.arch)
            if len(self._plan_memo) < 1024:  # sweeps reuse a few site lists; never grow without bound
                self._plan_memo[key] = plan
        return Capture(
            self.arch,
            self._tracker,
            plan,
            positions=positions,
            to=to,
            dtype=resolved,
            sink=sink,
            keep_grad=keep_grad,
        )

    def intervene(self, ops: Mapping[str | Site, OpSpec]) -> Intervention:
        """Apply ``{site: op or [ops]}`` on every forward pass inside the ``with`` block.

        Several sites and several ops per site combine, e.g.
        ``lm.intervene({"resid_post.6": ms.ops.add(v, coeff=4.0), "head_out.3.1": ms.ops.zero()})``. The hooks
        are removed on exit, also when the block raises.

        Examples:
            >>> import mechscope as ms
            >>> lm = ms.load("toy")
            >>> with lm.intervene({"head_out.0.0": ms.ops.zero()}):
            ...     ablated = lm.forward("The capital of France is")
            >>> lm.token_texts([int(ablated[0, -1].argmax())])
            [' Lisbon']
        """
        return Intervention(self.arch, self._tracker, plan(self.arch, ops))


def execution_device(module: nn.Module) -> torch.device | None:
    """The device ``module`` computes on: None for a module without parameters or device hooks.

    A model dispatched by accelerate (``device_map``) keeps offloaded weights on the meta device and
    moves them in for each call; its hooks name the real device, so they come first. Otherwise it is the
    device of the module's first parameter.

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.core.lm import execution_device
        >>> execution_device(ms.load("toy").model)
        device(type='cpu')
    """
    for part in module.modules():  # an offloaded block hooks its leaves, not itself
        hook = getattr(part, "_hf_hook", None)
        for step in getattr(hook, "hooks", (hook,)):  # a SequentialHook chains several
            device = getattr(step, "execution_device", None)
            if device is not None:
                return torch.device(device)
    for parameter in module.parameters():
        return parameter.device
    return None


def _input_device(arch: ModelMap) -> torch.device:
    return execution_device(arch.embed_module()) or torch.device("cpu")


def wrap(model: nn.Module, tokenizer: Any = None) -> LanguageModel:
    """Use a model already in memory: PEFT adapters, quantized, custom-loaded, sharded with ``device_map``.

    The model gets the same `ModelMap` and hooks as one `load` reads from disk, so every analysis (and
    ``run_doctor``) works on it. A PEFT ``PeftModel`` (or another wrapper holding the transformers model) is
    unwrapped to the model inside; ``lm.model`` is that inner model. Without ``tokenizer`` the model takes
    token ids only. The model is switched to eval mode; the tokenizer gets a pad token and the padding
    side mechscope batches with (see `mechscope.models.loading.wrap_model`).

    Examples:
        >>> import mechscope as ms
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> folder = ms.load("toy").source
        >>> lm = ms.wrap(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
        >>> lm.generate("The capital of France is", max_new_tokens=1)
        ' Paris'

    Raises:
        ModelLoadError: ``model`` is not a transformers model (or a wrapper of one), or ``tokenizer`` is not
            a tokenizer.
    """
    return LanguageModel(wrap_model(model, tokenizer))


def load(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> LanguageModel:
    """Load a model by bundled organism name, local folder or hub id (see `load_model` for the args).

    Weights load through ``from_pretrained`` (safetensors first; ``trust_remote_code`` only when asked).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")  # or ms.load("path/to/folder"), ms.load("gpt2", revision="main")
        >>> lm.arch.family, lm.has_tokenizer
        ('llama', True)
    """
    return LanguageModel(
        load_model(
            name_or_path,
            dtype=dtype,
            device=device,
            device_map=device_map,
            revision=revision,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
    )
