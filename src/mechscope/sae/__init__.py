"""Sparse autoencoders over any site of any model: load and save (SAELens's layout), train, evaluate, read, edit.

`load` reads a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) and `save` writes one;
`SAE` is the autoencoder (`mechscope.sae.model`); `train_sae`, `evaluate` and the readers (`top_features`,
`top_examples`, `logit_effect`, `encode`) are here too. Editing features during a forward pass or `generate` is
an intervention op, `mechscope.ops.sae_edit`.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8)
    >>> with lm.intervene({sae.site: ms.ops.sae_edit(sae)}):  # no feature changed: the logits are the model's
    ...     same = lm.forward("The capital of France is")
    >>> bool((same == lm.forward("The capital of France is")).all())
    True
"""

from mechscope.sae.evaluate import evaluate
from mechscope.sae.formats import check_fits, hook_of_site, load, save, site_of_hook
from mechscope.sae.model import SAE, SAEConfig
from mechscope.sae.read import encode, logit_effect, top_examples, top_features
from mechscope.sae.train import train_sae

__all__ = [
    "SAE",
    "SAEConfig",
    "check_fits",
    "encode",
    "evaluate",
    "hook_of_site",
    "load",
    "logit_effect",
    "save",
    "site_of_hook",
    "top_examples",
    "top_features",
    "train_sae",
]
