"""Token windows for training language models: documents packed into one stream, windows cut
at document starts, and the random given prefixes/spans that teach prompting and infilling."""
from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


def pack_documents(docs: list[list[int]], length: int, bos: int | None, eos: int | None) -> tuple[Tensor, Tensor]:
    """The stream ``[bos] doc [eos] [bos] doc [eos] ...`` (int32) and the window starts (int64).

    A window of ``length`` tokens starts at every document start (so a model learns how documents
    begin, and sampling can start from ``bos``) and every ``length`` tokens inside a longer document;
    it runs on into the next documents."""
    pieces, starts, offset = [], [], 0
    for doc in docs:
        piece = ([bos] if bos is not None else []) + list(doc) + ([eos] if eos is not None else [])
        starts.append(torch.arange(offset, offset + max(len(piece) - 1, 1), length))
        pieces.append(torch.tensor(piece, dtype=torch.int32))
        offset += len(piece)
    return torch.cat(pieces), torch.cat(starts)


class TokenWindows(torch.utils.data.Dataset):
    """Windows ``stream[start : start + length]`` (padded with ``pad`` at the end of the stream).
    The stream may be a memory-mapped array, so a corpus need not fit in memory as windows."""

    def __init__(self, stream: Tensor | np.ndarray, starts: Tensor, length: int, pad: int):
        self.stream, self.starts, self.length, self.pad = stream, starts, length, pad

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = int(self.starts[i])
        window = torch.from_numpy(np.asarray(self.stream[s: s + self.length]).astype(np.int64))
        n = len(window)
        if n < self.length:
            window = torch.cat([window, window.new_full((self.length - n,), self.pad)])
        return {"tokens": window, "length": torch.tensor(n)}

    @property
    def tokens(self) -> Tensor:
        """All windows (N, length): for small corpora and tests."""
        return torch.stack([self[i]["tokens"] for i in range(len(self))])


def random_given(tokens: Tensor, lengths: Tensor, prefix_prob: float, infill_prob: float,
                 bos: int | None = None, generator=None) -> Tensor:
    """Given-token masks (B, L) for training: a random prefix (``prefix_prob``), or everything but
    1-3 random spans (``infill_prob``), else nothing; a leading ``bos`` is always given."""
    B, L = tokens.shape
    pos = torch.arange(L)
    r = torch.rand(B, generator=generator)
    cut = (torch.rand(B, generator=generator) * (lengths - 1).clamp(min=1)).long() + 1  # 1..len-1
    given = (r < prefix_prob)[:, None] & (pos[None] < cut[:, None])
    # Infilling: cut points at random positions, alternating given / to generate.
    n_cuts = 2 * torch.randint(1, 4, (B,), generator=generator)
    cuts = (torch.rand(B, 6, generator=generator) * lengths[:, None]).long()
    cuts = torch.where(torch.arange(6)[None] < n_cuts[:, None], cuts, L)  # unused cuts are never crossed
    crossings = (pos[None, None, :] >= cuts[:, :, None]).sum(1)  # (B, L)
    infill = (r >= prefix_prob) & (r < prefix_prob + infill_prob)
    given |= infill[:, None] & (crossings % 2 == 0)
    if bos is not None:
        given[:, 0] |= tokens[:, 0] == bos
    return given & (pos[None] < lengths[:, None])
