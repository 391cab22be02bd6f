"""Sparse autoencoders over any site of any model: load and save (SAELens's layout), train, evaluate, read, edit.

`load` reads a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) and `save` writes one;
`SAE` is the autoencoder (`mechscope.sae.model`). Editing features during a forward pass or `generate` is
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

from mechscope.sae.formats import check_fits, hook_of_site, load, save, site_of_hook
from mechscope.sae.model import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "check_fits", "hook_of_site", "load", "save", "site_of_hook"]
