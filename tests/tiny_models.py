"""Tiny random models that tests build and save as the real ones are saved (nothing downloads)."""
import torch


def tiny_bert(folder, words=("digit",)):
    """A 1-layer BERT (width 16) whose vocabulary is ``words`` and the digits, saved as transformers does."""
    from transformers import BertConfig, BertModel, BertTokenizer
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(str(d) for d in range(10))]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)).save_pretrained(folder)
    return folder
