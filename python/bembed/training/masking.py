"""Whole-word masking for MLM pretraining (BERT's 80/10/10 at the word level).

A whole word is chosen or not: `mask_prob` of the words of a sequence (rounded, at least one when
there is any word) are picked at random; every token of a picked word is predicted. Per picked word,
80% of the time all its tokens become <mask>, 10% random non-special tokens, 10% stay as they are.
Special tokens (<s>, </s>, <pad>, ...) are never picked. Words come from `bembed.tokenizer.word_ids`.
"""

from __future__ import annotations

import torch


def whole_word_mask(input_ids: torch.Tensor, word_ids: torch.Tensor, *, mask_prob: float, mask_id: int,
                    random_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence: input_ids (L,) and its word ids (L,) (−1 for specials and padding) →
    (masked input_ids, labels) with labels −100 where nothing is predicted. random_ids: the token ids a
    "random" replacement draws from (the non-special vocabulary)."""
    if input_ids.dim() != 1 or word_ids.shape != input_ids.shape:
        raise ValueError(f"whole_word_mask: input_ids and word_ids must be (L,) of one shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(word_ids.shape)}")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"whole_word_mask: mask_prob must be in (0, 1), got {mask_prob}")
    labels = torch.full_like(input_ids, -100)
    # word ids need not be dense (the id of a special token's own "word" is unused): pick among present ones
    present = torch.unique(word_ids[word_ids >= 0])
    if present.numel() == 0:
        return input_ids.clone(), labels
    k = max(1, round(present.numel() * mask_prob))
    picked = present[torch.randperm(present.numel(), generator=generator)[:k]]
    # per word: 0 → <mask> (80%), 1 → random token (10%), 2 → unchanged (10%)
    action = torch.bucketize(torch.rand(k, generator=generator), torch.tensor([0.8, 0.9]))
    word_action = torch.full((int(present.max()) + 1,), -1, dtype=torch.long)
    word_action[picked] = action
    token_action = torch.where(word_ids >= 0, word_action[word_ids.clamp(min=0)], torch.full_like(word_ids, -1))
    chosen = token_action >= 0
    labels[chosen] = input_ids[chosen]
    out = input_ids.clone()
    out[token_action == 0] = mask_id
    to_random = token_action == 1
    draws = torch.randint(len(random_ids), (int(to_random.sum()),), generator=generator)
    out[to_random] = random_ids[draws]
    return out, labels
