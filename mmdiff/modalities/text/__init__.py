"""The text modality: continuous diffusion over token embeddings (CDCD, Dieleman et al. 2022), on
the same core as images and video; ``objective="masked"`` is masked (absorbing-state) diffusion
over token ids (MDLM, ``mmdiff.core.masked``) on the same DiT; ``objective="ar"`` builds the
autoregressive baseline (the same DiT, causal, next-token cross-entropy).

``model.py`` is the network and its denoiser, ``task.py`` what training needs, ``pipeline.py``
what sampling needs; token windows are ``mmdiff.data.windows``, tokenizers
``mmdiff.components.tokenizers``.
"""
from .model import ScoreInterpolation, TextModel, TextModelConfig, TimeWarp, token_ce
from .pipeline import TextPipeline
from .task import TextArgs, TextTask, tokenizer_for

__all__ = ["ScoreInterpolation", "TextArgs", "TextModel", "TextModelConfig", "TextPipeline", "TextTask", "TimeWarp",
           "token_ce", "tokenizer_for"]
