"""One layer's weights applied to directions: the QK scores, OV outputs and MLP response (no forward pass).

The definitions (norms, biases, grouped-query heads, q/k norms, score scale, what OV and the MLP response
are) are in `mechscope.weights.directions`, which scores these against random directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.weights.layer_weights import LayerWeights


@dataclass(frozen=True)
class Readout:
    """What a layer does with ``n`` input directions, before projecting on targets.

    Attributes:
        qk: ``[head, n, n]`` scaled query-key scores (query i, key j).
        ov: ``[head, n, d_model]`` what each head writes when attending fully to direction i.
        mlp: ``[n, d_model]`` the MLP's output, or None when it could not be computed.
    """

    qk: Tensor
    ov: Tensor
    mlp: Tensor | None

    def __sub__(self, other: Readout) -> Readout:
        mlp = self.mlp - other.mlp if self.mlp is not None and other.mlp is not None else None
        return Readout(qk=self.qk - other.qk, ov=self.ov - other.ov, mlp=mlp)


def readout(weights: LayerWeights, x: Tensor) -> Readout:
    """Push ``x`` (``[n, d_model]``) through one layer's weights (see the module docstring).

    Batched over heads and directions: a handful of ``einsum`` calls per layer.
    """
    attn = weights.attention
    n = x.shape[0]
    heads, kv_heads = attn.w_q.shape[0], attn.w_k.shape[0]
    with torch.no_grad():
        h = weights.attn_norm(x)
        q = torch.einsum("hed,nd->nhe", attn.w_q, h)
        k = torch.einsum("ged,nd->nge", attn.w_k, h)
        v = torch.einsum("ged,nd->nge", attn.w_v, h)
        if attn.b_q is not None:
            q = q + attn.b_q
        if attn.b_k is not None:
            k = k + attn.b_k
        if attn.b_v is not None:
            v = v + attn.b_v
        if attn.q_norm is not None and attn.k_norm is not None:
            if attn.qk_norm_per_head:
                q = attn.q_norm(q.reshape(n * heads, -1)).reshape(q.shape)
                k = attn.k_norm(k.reshape(n * kv_heads, -1)).reshape(k.shape)
            else:
                q = attn.q_norm(q.reshape(n, -1)).reshape(q.shape)
                k = attn.k_norm(k.reshape(n, -1)).reshape(k.shape)
        group = heads // kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        qk = torch.einsum("nhe,mhe->hnm", q, k) * attn.scaling
        ov = torch.einsum("hde,nhe->hnd", attn.w_o, v)
        mlp = weights.mlp(weights.mlp_norm(x)) if weights.mlp is not None else None
    return Readout(qk=qk, ov=ov, mlp=mlp)
