"""Text data layer: built-in corpora, file loading, Hugging Face columns and the one resolver."""
import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmdiff.core.samplers import sample
from mmdiff.core.schedules import EDMSchedule
from mmdiff.data import text as T
from mmdiff.data.markov import MarkovChain, markov_corpus, render_tokens
from mmdiff.data.text import DataError, TextCorpus, build_text_corpus, load_hf_text, load_text_files, python_docstrings


def _digest(texts):
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


# ----------------------------------------------------------------------------- python-docstrings

def test_docstrings_size_splits_and_dedup():
    everything, train, validation = (python_docstrings(s) for s in ("all", "train", "validation"))
    size = sum(len(t.encode()) for t in everything)
    assert 1_300_000 < size < 2_500_000, size  # 1_764_682 bytes on CPython 3.11.7
    assert len(everything) > 5_000  # 8_255 on CPython 3.11.7
    assert len(set(everything)) == len(everything)  # exact repeats kept once
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(everything)
    assert 0.03 < len(validation) / len(everything) < 0.07


def test_docstrings_order_keys_and_skipped_folders():
    records = T._docstring_records()
    assert records[0][0] == "__future__.py::<module>"  # sorted paths, module docstring first
    paths = [key.split("::")[0] for key, _ in records]
    assert paths == sorted(paths)
    assert "json/decoder.py::JSONDecoder.decode" in dict(records)
    for path in set(paths):
        assert not set(path.split("/")[:-1]) & T.STDLIB_SKIP_DIRS, path
    # the split is a function of the key alone
    validation = set(python_docstrings("validation"))
    assert all((doc in validation) == T._in_validation(key) for key, doc in records)


def test_docstrings_identical_in_a_fresh_process_with_another_hash_seed():
    code = ("import hashlib; from mmdiff.data.text import python_docstrings as p\n"
            "for split in ('train', 'validation'):\n"
            "    v = p(split); print(len(v), hashlib.sha256('\\x00'.join(v).encode()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    expected = []
    for split in ("train", "validation"):
        expected += [str(len(python_docstrings(split))), _digest(python_docstrings(split))]
    assert out.stdout.split() == expected


def test_docstrings_extracted_once_per_process_and_not_aliased():
    python_docstrings("train")
    before = T._docstring_records.cache_info()
    first = python_docstrings("train")
    first.clear()
    assert len(python_docstrings("train")) > 5_000
    after = T._docstring_records.cache_info()
    assert (after.misses, after.hits) == (before.misses, before.hits + 2)


def test_file_docstrings_qualified_names_in_source_order(tmp_path):
    source = textwrap.dedent('''\
        """Module doc."""
        class A:
            """A doc."""
            def f(self):
                """f doc."""
                def inner():
                    """inner doc."""
        try:
            import x
        except ImportError:
            def g():
                """g doc."""
        if True:
            async def h():
                """
                h doc, indented.
                """
        def no_doc():
            pass
        ''')
    (tmp_path / "m.py").write_text(source)
    (tmp_path / "bad.py").write_text("def broken(:\n")
    assert T._file_docstrings(tmp_path / "m.py", "m.py") == [
        ("<module>", "Module doc."), ("A", "A doc."), ("A.f", "f doc."), ("A.f.inner", "inner doc."),
        ("g", "g doc."), ("h", "h doc, indented.")]
    assert T._file_docstrings(tmp_path / "bad.py", "bad.py") == []


# ----------------------------------------------------------------------------- markov

def test_markov_matrix_stationary_and_entropy_rate():
    chain = MarkovChain()
    P, pi = chain.transition, chain.stationary
    assert P.shape == (32, 32) and P.dtype == torch.float64
    assert torch.allclose(P.sum(1), torch.ones(32, dtype=torch.float64), atol=1e-12, rtol=0)
    assert P.min() >= 0.01 / 32 * (1 - 1e-9)  # every transition possible: NLL is always finite
    assert abs(pi.sum().item() - 1) < 1e-12 and pi.min() > 0
    assert torch.allclose(pi @ P, pi, atol=1e-14, rtol=0)
    assert chain.entropy_rate() == pytest.approx(1.2503706805771975, abs=1e-9)
    assert torch.equal(MarkovChain().transition, P)
    assert not torch.equal(MarkovChain(seed=1).transition, P)
    likely = (P.sort(1, descending=True).values.cumsum(1) < 0.9).sum(1) + 1  # successors for 90% mass
    assert 2 < likely.double().mean() < 6


def test_markov_empirical_nll_converges_to_entropy_rate():
    chain = MarkovChain()
    samples = chain.sample(32, 4000, torch.Generator().manual_seed(0))
    assert samples.shape == (32, 4000) and samples.dtype == torch.long
    measured = chain.nll_per_token(samples).mean().item()
    assert measured == pytest.approx(chain.entropy_rate(), rel=0.02)
    uniform = torch.randint(0, 32, (32, 4000), generator=torch.Generator().manual_seed(0))
    assert chain.nll_per_token(uniform).mean().item() > 3.0  # a bad model is visibly worse


def test_markov_log_prob_matches_brute_force():
    chain = MarkovChain(vocab_size=7, seed=3, concentration=0.2)
    tokens = torch.randint(0, 7, (5, 9), generator=torch.Generator().manual_seed(1))
    P, pi = chain.transition.tolist(), chain.stationary.tolist()
    for row, got in zip(tokens.tolist(), chain.log_prob(tokens).tolist()):
        expected = math.log(pi[row[0]]) + sum(math.log(P[a][b]) for a, b in zip(row, row[1:]))
        assert got == pytest.approx(expected, abs=1e-12)
    assert chain.nll_per_token(tokens).tolist() == pytest.approx((-chain.log_prob(tokens) / 9).tolist())
    with pytest.raises(ValueError, match=r"\[0, 7\), got \[0, 7\]"):
        chain.log_prob(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        chain.log_prob(torch.tensor([1, 2]))


def test_markov_posterior_matches_enumeration():
    chain = MarkovChain(vocab_size=4, seed=2, concentration=0.3)
    evidence = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    seqs = torch.cartesian_prod(*[torch.arange(4)] * 5)  # all 4^5 sequences
    joint = chain.log_prob(seqs)[None] + evidence.gather(2, seqs.T[None].expand(3, -1, -1)).sum(1)  # (3, 1024)
    weights = joint.softmax(-1)
    expected = torch.stack([torch.stack([weights[b] @ F.one_hot(seqs[:, i], 4).double() for i in range(5)])
                            for b in range(3)])
    assert torch.allclose(chain.posterior(evidence), expected, atol=1e-12)


def test_exact_markov_denoiser_samples_the_chain():
    """The closed-form denoiser run through a core sampler generates the chain: the sampler alone
    costs under 3% NLL at 64 steps, so a trained model's larger gap is the model's."""
    chain = MarkovChain()
    g = torch.Generator().manual_seed(0)
    E = F.normalize(torch.randn(32, 16, generator=g), dim=-1) * 4
    sigmas = EDMSchedule(sigma_lo=1.0, sigma_hi=300.0, sigma_data=1.0).sigmas(64)
    x = torch.randn(128, 64, 16, generator=g) * math.sqrt(300.0**2 + 1)
    ids = (sample(chain.denoiser(E), x, sigmas, "dpmpp_2m", progress=False) @ E.T).argmax(-1)
    data = markov_corpus("validation")
    assert chain.nll_per_token(ids).mean() < 1.03 * chain.nll_per_token(data).mean()
    counts = torch.bincount(ids.flatten(), minlength=32).double()
    assert (counts / counts.sum() - chain.stationary).abs().sum() < 0.1  # symbol frequencies: stationary
    clean = chain.denoiser(E)(E[data[:4]] + 0.1 * torch.randn(4, 64, 16, generator=g), torch.full((4,), 0.1))
    assert torch.allclose(clean, E[data[:4]], atol=1e-6)  # at low noise it returns the clean embeddings


def test_markov_corpus_deterministic_and_splits_differ():
    train, validation = markov_corpus("train"), markov_corpus("validation")
    assert train.shape == (4096, 64) and validation.shape == (256, 64)
    assert torch.equal(train, markov_corpus("train"))
    assert not set(map(tuple, validation.tolist())) & set(map(tuple, train.tolist()))
    assert not torch.equal(markov_corpus("train", 8, seed=1), train[:8])
    with pytest.raises(ValueError, match="expected one of \\['train', 'validation'\\]"):
        markov_corpus("all")


def test_render_tokens():
    assert render_tokens(torch.tensor([[0, 25, 26, 31], [52, 61, 1, 2]])) == ["azAF", "09bc"]
    with pytest.raises(ValueError, match="got \\[0, 62\\]"):
        render_tokens(torch.tensor([[0, 62]]))


# ----------------------------------------------------------------------------- files

def test_txt_lines_skip_blank_lines_and_keep_crlf_text(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first line\r\n\n  indented\n   \nlast")
    corpus = load_text_files(f)
    assert corpus == TextCorpus(["first line", "  indented", "last"], str(f), [(str(f), "2 blank lines")])


def test_folder_recursive_sorted_documents_and_skips(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("doc z\nsecond line\n")
    (tmp_path / "a.txt").write_text("doc a\n")
    (tmp_path / "b" / "empty.txt").write_bytes(b"")
    (tmp_path / "b" / "spaces.txt").write_text(" \n\n")
    (tmp_path / "README.md").write_text("# not data")
    corpus = load_text_files(tmp_path, unit="document")
    assert corpus.texts == ["doc a\n", "doc z\nsecond line\n"]
    assert corpus.skipped == [(str(tmp_path / "README.md"), "not a .txt or .jsonl file"),
                              (str(tmp_path / "b" / "empty.txt"), "empty file"),
                              (str(tmp_path / "b" / "spaces.txt"), "only whitespace")]
    assert load_text_files(tmp_path).texts == ["doc a", "doc z", "second line"]
    with pytest.raises(ValueError, match="unknown unit 'paragraph'"):
        load_text_files(tmp_path, unit="paragraph")


def test_non_utf8_file_warns_with_offset_and_is_counted(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("\ufeffcaf".encode() + b"\xe9 au lait\n")  # BOM counts in the offset
    with pytest.warns(UserWarning, match=f"skipping {bad}: not UTF-8: byte 0xe9 at offset 6"):
        corpus = load_text_files(tmp_path)
    assert corpus.texts == ["fine"]
    assert corpus.skipped == [(str(bad), "not UTF-8: byte 0xe9 at offset 6")]
    (tmp_path / "good.txt").write_text("\ufeffwith BOM\n")
    with pytest.warns(UserWarning):
        assert load_text_files(tmp_path).texts == ["with BOM"]


def test_nothing_left_is_a_data_error_naming_path_and_skips(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.warns(UserWarning, match="offset 0"):
        with pytest.raises(DataError) as error:
            load_text_files(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: no text found in 2 file(s)")
    assert f"{tmp_path / 'bad.txt'} (not UTF-8: byte 0xff at offset 0)" in message
    assert f"{tmp_path / 'empty.txt'} (empty file)" in message
    with pytest.raises(DataError, match="no such file or folder"):
        load_text_files(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected a .txt or .jsonl file"):
        load_text_files(tmp_path / "data.csv")


def test_jsonl_fields_blank_and_null_records(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"text": "one", "id": 1}, {"text": "line\u2028separator stays"}, None, {"text": ""},
            {"text": None}, {"body": "x", "text": "two"}]
    f.write_text("\n".join("" if r is None else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    corpus = load_text_files(f)
    assert corpus.texts == ["one", "line\u2028separator stays", "two"]
    assert corpus.skipped == [(str(f), "1 blank line"), (str(f), "2 records with empty or null 'text'")]
    g = tmp_path / "other.jsonl"
    g.write_text('{"body": "b1"}\n{"body": "b2"}\n')
    assert load_text_files(g, jsonl_field="body").texts == ["b1", "b2"]


@pytest.mark.parametrize("line, message", [
    ('{"text": "cut', r"d.jsonl:2:10: not valid JSON: Unterminated string starting at; fix or remove this line"),
    ('{"title": "x"}', r"d.jsonl:2: expected an object with field 'text', got keys \['title'\]"),
    ('["text"]', r"d.jsonl:2: expected an object with field 'text', got a JSON list"),
    ('{"text": 3}', r"d.jsonl:2: field 'text' is a int, expected a string"),
])
def test_jsonl_malformed_line_is_an_error_with_file_and_line(tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        load_text_files(tmp_path)


# ----------------------------------------------------------------------------- Hugging Face

@pytest.fixture
def hf_folder(tmp_path):
    import datasets  # a dev dependency (pip install -e .[dev]); a missing one fails, not skips
    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["alpha", "beta", "", None, "gamma"],
                                             "title": ["t"] * 5, "label": [0, 1, 0, 1, 0]}),
        "validation": datasets.Dataset.from_dict({"text": ["delta"], "title": ["t"], "label": [1]}),
    })
    saved.save_to_disk(tmp_path / "hf")
    return tmp_path / "hf"


def test_hf_text_column_auto_detected_and_empty_values_counted(hf_folder):
    corpus = load_hf_text(str(hf_folder))
    assert corpus.texts == ["alpha", "beta", "gamma"]
    assert corpus.skipped == [(f"{hf_folder} [train] column 'text'", "2 empty or null values")]
    assert load_hf_text(str(hf_folder), "validation").texts == ["delta"]
    assert load_hf_text(str(hf_folder), column="title").texts == ["t"] * 5
    with pytest.raises(DataError, match=r"no split 'test'; the saved DatasetDict has \['train', 'validation'\]"):
        load_hf_text(str(hf_folder), "test")
    with pytest.raises(DataError, match=r"column 'label' is not a string column; columns: text \(string\), "
                                        r"title \(string\), label \(int64\)"):
        load_hf_text(str(hf_folder), column="label")


def test_hf_ambiguous_single_and_lone_dataset(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"title": ["a"], "body": ["b"]}).save_to_disk(tmp_path / "two")
    with pytest.raises(DataError, match=r"2 string columns\); pass column=; columns: title \(string\), body"):
        load_hf_text(str(tmp_path / "two"))
    assert load_hf_text(str(tmp_path / "two"), column="body").texts == ["b"]
    datasets.Dataset.from_dict({"content": ["c1", "c2"], "n": [1, 2]}).save_to_disk(tmp_path / "one")
    assert load_hf_text(str(tmp_path / "one")).texts == ["c1", "c2"]
    with pytest.raises(DataError, match=r"single Dataset \(split 'train'\) and cannot serve split 'validation'"):
        load_hf_text(str(tmp_path / "one"), "validation")


def test_hf_hub_name_offline_is_a_clear_error(monkeypatch):
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"'someone/no-such-set' does not exist locally and could not be loaded "
                                        r"from the Hugging Face hub .*built-in data sets are \['markov', "
                                        r"'python-docstrings'\]"):
        build_text_corpus("someone/no-such-set")


# ----------------------------------------------------------------------------- build_text_corpus

def test_build_builtins():
    docs = build_text_corpus("python-docstrings", "validation")
    assert docs.texts == python_docstrings("validation") and docs.source == "python-docstrings [validation]"
    markov = build_text_corpus("markov")
    assert markov.texts is None and len(markov) == 4096
    assert torch.equal(markov.tokens, markov_corpus("train"))
    with pytest.raises(DataError, match=r"did you mean 'python-docstrings'\?; built-ins are \['markov', "
                                        r"'python-docstrings'\]\) and not an existing path"):
        build_text_corpus("python_docstrings")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_text_corpus("python-docstrings", "dev")


def test_build_local_file_hash_split(tmp_path):
    f = tmp_path / "lines.txt"
    lines = [f"example number {i}" for i in range(400)] + ["example number 20"] * 3
    f.write_text("\n".join(lines))
    train, validation = build_text_corpus(str(f)), build_text_corpus(str(f), "validation")
    assert (len(train), len(validation)) == (383, 20)  # sha256 puts 17 of 400 (and 20) in validation
    assert validation.texts.count("example number 20") == 4  # repeats never straddle the split
    assert not set(train.texts) & set(validation.texts)
    assert sorted(train.texts + validation.texts) == sorted(lines)
    assert build_text_corpus(str(f), "all").texts == lines
    assert validation.source == f"{f} [validation: hash split]"
    assert build_text_corpus(str(f), "validation").texts == validation.texts
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("only one line\n")
    with pytest.raises(DataError, match=f"{tiny}: the 'validation' share of its 1 examples is empty"):
        build_text_corpus(str(tiny), "validation")


def test_build_local_split_layout_and_hf_folder(tmp_path, hf_folder):
    layout = tmp_path / "layout"
    (layout / "train").mkdir(parents=True)
    (layout / "train" / "part.txt").write_text("t1\nt2\n")
    (layout / "validation.jsonl").write_text('{"text": "v1"}\n')
    assert build_text_corpus(str(layout)).texts == ["t1", "t2"]
    assert build_text_corpus(str(layout), "validation").texts == ["v1"]
    assert build_text_corpus(str(layout), "all").texts == ["t1", "t2", "v1"]
    (layout / "validation.jsonl").unlink()
    with pytest.raises(DataError, match=r"has split folders/files \['train'\] but none named 'validation'"):
        build_text_corpus(str(layout), "validation")
    assert build_text_corpus(str(hf_folder), "validation").texts == ["delta"]
