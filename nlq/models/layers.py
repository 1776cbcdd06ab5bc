"""Layers shared by the NLQ models (VSLNet, ReLER). Each layer is defined here once.

Conventions: video features ``[B, T, d]`` with ``video_mask`` ``[B, T]`` (True = valid step),
query features ``[B, L, d]`` with ``text_mask`` ``[B, L]``. Every layer that mixes steps
(convolution, attention, pooling) ignores masked steps, so the values of padded steps never
reach valid ones. Masked logits are filled with the most negative finite value of their
dtype (no -inf, so fp16/bf16 autocast and fully masked rows stay finite).
"""
from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill masked entries (``mask`` False) with the dtype's most negative finite value."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked entries (a fully masked row gives uniform weights)."""
    return mask_logits(logits, mask).softmax(dim=dim)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv over time (one filter per channel) + pointwise conv + ReLU.

    x: [B, T, d] -> [B, T, d]; "same" padding (odd ``kernel_size``).
    """

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (got {kernel_size})")
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.pointwise = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x.transpose(1, 2)))).transpose(1, 2)


class ConvBlock(nn.Module):
    """``num_layers`` x (LayerNorm -> depthwise-separable conv -> dropout -> residual).

    With ``mask_input`` padded steps are zeroed before every convolution (ours); the
    released VSLNet convolves them as they are (``mask_input=False``, LayerNorm eps 1e-6).
    x: [B, T, d], mask: [B, T] -> [B, T, d].
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_layers: int = 4, dropout: float = 0.2,
                 norm_eps: float = 1e-5, mask_input: bool = True):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for _ in range(num_layers))
        self.convs = nn.ModuleList(DepthwiseSeparableConv(dim, kernel_size) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.mask_input = mask_input

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype) if self.mask_input else None
        for norm, conv in zip(self.norms, self.convs):
            h = norm(x)
            x = x + self.dropout(conv(h * keep if keep is not None else h))
        return x


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention with a key mask.

    query: [B, Lq, d], context: [B, Lk, d], context_mask: [B, Lk] (the same keys for every
    query) or [B, Lq, Lk] (per query, e.g. a local window) -> [B, Lq, d].
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.2, out_projection: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        # the released VSLNet has no projection after the heads (out_projection=False)
        self.out = nn.Linear(dim, dim) if out_projection else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # [B, h, n, d/h]

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(query)), self._split(self.key(context)), self._split(self.value(context))
        # additive key mask [B, 1, 1 | Lq, Lk]: the dtype's lowest finite value (not -inf), so a
        # fully masked row gets uniform weights instead of NaN, as masked_softmax does
        bias = torch.zeros(context_mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~context_mask.bool(), torch.finfo(q.dtype).min)
        bias = bias[:, None, None, :] if context_mask.dim() == 2 else bias[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(2))  # [B, Lq, d]


class AttentionBlock(nn.Module):
    """Pre-norm residual attention: x + dropout(MHA(LN(x), context)).

    Self-attention when ``context`` is None, cross-attention otherwise (the context gets its
    own LayerNorm). x: [B, Lq, d], context: [B, Lk, d] -> [B, Lq, d].
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.2, cross: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim) if cross else None
        self.attention = MultiHeadAttention(dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask, context=None, context_mask=None):
        """mask: [B, Lq] (self-attention keys), context_mask: [B, Lk] (cross-attention keys)."""
        h = self.norm(x)
        if self.context_norm is None:
            context, context_mask = h, mask
        else:
            context = self.context_norm(context)
        return x + self.dropout(self.attention(h, context, context_mask))


class ReleasedAttentionBlock(nn.Module):
    """The released VSLNet's attention block (NLQ/VSLNet ``MultiHeadAttentionBlock``).

    ``h = x + dropout(MHA(dropout(LN1(x))))`` with dropout on the attention weights and no
    projection after the heads, then ``h + dropout(Linear(dropout(LN2(h))))``; LayerNorm eps
    1e-6. x: [B, T, d], mask: [B, T] -> [B, T, d].
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, num_heads, dropout, out_projection=False)
        self.out_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.norm(x))
        x = x + self.dropout(self.attention(h, h, mask))
        return x + self.dropout(self.out(self.dropout(self.out_norm(x))))


class FeedForwardBlock(nn.Module):
    """Pre-norm residual feed-forward: x + dropout(MLP(LN(x))). x: [B, T, d] -> [B, T, d].

    ``hidden_dim`` 0 means a single Linear(d->d) (VSLNet's attention block), otherwise
    Linear(d->hidden) -> GELU -> Linear(hidden->d).
    """

    def __init__(self, dim: int, hidden_dim: int = 0, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        if hidden_dim:
            self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_dim, dim))
        else:
            self.mlp = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.mlp(self.norm(x)))


class FeatureEncoder(nn.Module):
    """VSLNet's feature encoder: learned position embedding, conv block, one attention block.

    ``released``: the released VSLNet's blocks (:class:`ReleasedAttentionBlock`, LayerNorm eps
    1e-6; padded steps are still zeroed before each conv, which the release does not do); otherwise ours (:class:`AttentionBlock` with an output
    projection, then a :class:`FeedForwardBlock`; padded steps zeroed before each conv).
    x: [B, T, d], mask: [B, T] -> [B, T, d] (T <= ``max_len``).
    """

    def __init__(self, dim: int, num_heads: int = 8, max_len: int = 128, kernel_size: int = 7,
                 num_conv_layers: int = 4, dropout: float = 0.2, released: bool = False):
        super().__init__()
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, dim)
        if released:
            # padded steps are still zeroed before each conv (the release convolves them as they
            # are, so a clip's outputs depend on its batch); at 128 pooled steps padding is rare
            self.conv_block = ConvBlock(dim, kernel_size, num_conv_layers, dropout, norm_eps=1e-6)
            self.attention = ReleasedAttentionBlock(dim, num_heads, dropout)
            self.feed_forward = nn.Identity()
        else:
            self.conv_block = ConvBlock(dim, kernel_size, num_conv_layers, dropout)
            self.attention = AttentionBlock(dim, num_heads, dropout)
            self.feed_forward = FeedForwardBlock(dim, 0, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        if steps > self.max_len:
            raise ValueError(f"sequence of {steps} steps is longer than the position embedding "
                             f"(max_len {self.max_len}); pool the features or raise max_len")
        x = x + self.position_embedding.weight[:steps].to(x.dtype)
        x = self.conv_block(x, mask)
        return self.feed_forward(self.attention(x, mask))


class ContextQueryAttention(nn.Module):
    """Trilinear context-query attention (VSLNet / BiDAF).

    S_ij = w^T [c_i; q_j; c_i * q_j]; S_r = softmax over the query, S_c = softmax over the
    context; A = S_r Q, B = S_r S_c^T C; output Linear(4d->d)([C; A; C*A; C*B]).
    ``dropout_scores_only`` (the released VSLNet): dropout only on the inputs of S, A and B
    use the undropped C and Q; otherwise (ours) C and Q are dropped for everything.
    context: [B, T, d], query: [B, L, d] -> [B, T, d].
    """

    def __init__(self, dim: int, dropout: float = 0.2, dropout_scores_only: bool = False):
        super().__init__()
        self.dropout_scores_only = dropout_scores_only
        self.w_context = nn.Linear(dim, 1, bias=False)
        self.w_query = nn.Linear(dim, 1, bias=False)
        self.w_product = nn.Parameter(torch.empty(1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.xavier_uniform_(self.w_product)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, context, query, context_mask, query_mask):
        c, q = self.dropout(context), self.dropout(query)
        if not self.dropout_scores_only:
            context, query = c, q
        scores = (self.w_context(c) + self.w_query(q).transpose(1, 2)
                  + (c * self.w_product) @ q.transpose(1, 2) + self.bias)  # [B, T, L]
        s_r = masked_softmax(scores, query_mask[:, None, :], dim=2)  # over query words
        s_c = masked_softmax(scores, context_mask[:, :, None], dim=1)  # over video steps
        a = s_r @ query  # [B, T, d]
        b = s_r @ (s_c.transpose(1, 2) @ context)  # [B, T, d]
        return self.out(torch.cat([context, a, context * a, context * b], dim=-1))


class QueryPooledConcat(nn.Module):
    """Attention-pool the query into one vector, append it to every step, Linear(2d->d).

    context: [B, T, d], query: [B, L, d], query_mask: [B, L] -> [B, T, d].
    """

    def __init__(self, dim: int):
        super().__init__()
        self.pool_score = nn.Linear(dim, 1)
        self.out = nn.Linear(2 * dim, dim)

    def pool(self, query: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the query words: [B, L, d] -> [B, d]."""
        weights = masked_softmax(self.pool_score(query).squeeze(-1), query_mask)  # [B, L]
        return (weights.unsqueeze(-1) * query).sum(dim=1)

    def forward(self, context, query, query_mask):
        pooled = self.pool(query, query_mask).unsqueeze(1).expand_as(context)
        return self.out(torch.cat([context, pooled], dim=-1))


class HighlightLayer(nn.Module):
    """Query-guided highlighting: per-step foreground logit. x: [B, T, d] -> logits [B, T].

    Models multiply the features by ``sigmoid(logits)``; masked steps get very negative logits.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask_logits(self.score(x).squeeze(-1), mask)


class ConditionedSpanPredictor(nn.Module):
    """VSLNet's conditioned span predictor.

    A second feature encoder E; start logits from [E(F); F], end logits from [E(E(F)); F],
    each through Linear(2d->d) -> ReLU -> Linear(d->1). x: [B, T, d] -> two [B, T] tensors
    (masked steps get very negative logits).
    """

    def __init__(self, dim: int, num_heads: int = 8, max_len: int = 128, kernel_size: int = 7,
                 num_conv_layers: int = 4, dropout: float = 0.2, released: bool = False):
        super().__init__()
        self.encoder = FeatureEncoder(dim, num_heads, max_len, kernel_size, num_conv_layers, dropout, released)
        self.start_norm = nn.LayerNorm(dim, eps=1e-6 if released else 1e-5)
        self.end_norm = nn.LayerNorm(dim, eps=1e-6 if released else 1e-5)
        self.start_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.end_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start_features = self.encoder(x, mask)
        end_features = self.encoder(start_features, mask)
        start = self.start_head(torch.cat([self.start_norm(start_features), x], dim=-1)).squeeze(-1)
        end = self.end_head(torch.cat([self.end_norm(end_features), x], dim=-1)).squeeze(-1)
        return mask_logits(start, mask), mask_logits(end, mask)


class VideoQueryFusion(nn.Module):
    """The shared front of VSLNet and ReLER: project both inputs to d, encode them with one
    shared feature encoder, fuse with context-query attention and the query-pooled concat.

    video: [B, T, video_dim], text: [B, L, text_dim] -> {"video": [B, T, d], "text": [B, L, d]
    (encoded), "fused": [B, T, d] (query-aware video)}.
    ``released``: the released VSLNet's encoder blocks and context-query dropout, and no
    dropout before the text projection (its ``query_affine``).
    """

    def __init__(self, video_dim: int, text_dim: int, dim: int, num_heads: int = 8, max_len: int = 128,
                 kernel_size: int = 7, num_conv_layers: int = 4, dropout: float = 0.2, released: bool = False):
        super().__init__()
        self.video_projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(video_dim, dim))
        self.text_projection = nn.Sequential(nn.Dropout(0.0 if released else dropout), nn.Linear(text_dim, dim))
        self.encoder = FeatureEncoder(dim, num_heads, max_len, kernel_size, num_conv_layers, dropout, released)
        self.cq_attention = ContextQueryAttention(dim, dropout, dropout_scores_only=released)
        self.cq_concat = QueryPooledConcat(dim)

    def forward(self, video, video_mask, text, text_mask) -> dict[str, torch.Tensor]:
        video = self.encoder(self.video_projection(video), video_mask)
        text = self.encoder(self.text_projection(text), text_mask)
        fused = self.cq_concat(self.cq_attention(video, text, video_mask, text_mask), text, text_mask)
        return {"video": video, "text": text, "fused": fused}
