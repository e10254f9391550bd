"""A leaner forward for torchvision's self-attention: same parameters, same state_dict, same function.

torchvision's EncoderBlock calls `nn.MultiheadAttention(x, x, x, need_weights=False)` with batch_first=True.
The generic `F.multi_head_attention_forward` behind it transposes the batch to the second axis, splits the packed
QKV projection through `unflatten -> transpose -> contiguous` copies and permutes the output back: several full
copies of [batch, tokens, 3 x width] activations per block, forward and backward. Self-attention needs none of
that: one packed projection viewed as [batch, tokens, 3, heads, head_dim], SDPA on strided views, one output
projection. `enable_fast_attention` switches the class of every such module in place (like activation
checkpointing), so parameter names, checkpoints and optimizer state are untouched; any call it does not cover
(masks, attention weights, cross-attention) takes torchvision's own path.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.MultiheadAttention):
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self._covers(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batch, tokens, width = query.shape
        heads = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        return self.out_proj(out), None

    def _covers(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        return (self.batch_first and self._qkv_same_embed_dim and self.in_proj_bias is not None
                and self.bias_k is None and not self.add_zero_attn and not need_weights
                and key_padding_mask is None and attn_mask is None and not is_causal
                and query is key and key is value and query.dim() == 3)


def enable_fast_attention(model: nn.Module) -> int:
    """Give every batch-first nn.MultiheadAttention of `model` the lean self-attention forward; returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.MultiheadAttention and module.batch_first:
            module.__class__ = SelfAttention
            changed += 1
    return changed
