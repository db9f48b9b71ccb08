"""Token counts: a real (Rust) tokenizer in batches, the estimate, where max_seq_length and the tokenizer come
from, and the local base model's hints."""

from __future__ import annotations

import json

import orjson
import pytest

from chatft_local.workspace.base_model import TINY_NAME, TINY_VERSION, base_model_hints
from shared.tokens import ESTIMATE_METHOD, MESSAGE_TOKENS, Estimate, TokenizerCounter, budget, token_counter
from shared.validation import Validator


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A tokenizer.json whose tokens are whitespace-separated words: counts a test can compute by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("alpha beta gamma delta".split())}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def rec(user_words: int, assistant_words: int) -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": " ".join(["alpha"] * user_words)},
                                      {"role": "assistant", "content": " ".join(["beta"] * assistant_words)}]})


def test_a_tokenizer_counts_each_content_in_batches(word_tokenizer):
    counter = TokenizerCounter(word_tokenizer)
    assert counter.count(["alpha beta", "gamma", "x y z w"]) == [2, 1, 4]
    assert str(word_tokenizer) in counter.method
    # 300 records cross a batch (256): every record's count is its own, and issues keep line order
    lines = [rec(i % 7 + 1, 3) for i in range(300)] + [rec(40, 1), rec(8, 1)]
    validator = Validator(counter=counter, max_seq_length=30, max_invalid_fraction=0.5)
    valid = list(validator.records([b"\n".join(lines) + b"\n"]))
    assert [v.tokens for v in valid[:7]] == [(i + 1) + 3 + 2 * MESSAGE_TOKENS for i in range(7)]
    report = validator.report().model_dump(mode="json")
    # line 301: 40 user words + 4 + 2 header tokens put the assistant at 46, past 30: wholly cut
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(301, "assistant_truncated")]
    assert report["warnings"] == [] and report["tokens"]["method"] == counter.method
    assert report["tokens"]["max"] == 7 + 3 + 8 and len(valid) == 301


def test_tokenizer_and_estimate_disagree_where_the_words_are_short(word_tokenizer):
    data = b"\n".join([rec(100, 100)] * 10)
    counted = Validator(counter=TokenizerCounter(word_tokenizer))
    estimated = Validator()
    for v in (counted, estimated):
        list(v.records([data]))
    assert counted.report().model_dump()["tokens"]["max"] == 200 + 8
    assert estimated.report().model_dump()["tokens"]["max"] == (599 + 499 + 3) // 4 + 8  # "alpha alpha ..." is 599 chars
    assert estimated.report().model_dump()["tokens"]["method"] == ESTIMATE_METHOD


def test_an_unusable_tokenizer_dir_falls_back_to_the_estimate_and_says_why(tmp_path):
    counter, note = token_counter(tmp_path)
    assert isinstance(counter, Estimate) and "no tokenizer.json" in note
    (tmp_path / "tokenizer.json").write_text("{not json")
    counter, note = token_counter(tmp_path)
    assert isinstance(counter, Estimate) and "could not be loaded" in note
    assert isinstance(token_counter("")[0], Estimate) and token_counter("")[1] == ""


def test_budget_takes_the_override_then_the_model_default(word_tokenizer):
    hints = (str(word_tokenizer), {"max_seq_length": 384, "num_train_epochs": 2})
    plan = budget("", {"max_seq_length": 1024}, hints, default_epochs=3)
    assert (plan.max_seq_length, plan.max_seq_length_source, plan.epochs) == (1024, "the upload's override", 2.0)
    assert isinstance(plan.counter, TokenizerCounter)
    plan = budget("", {"num_train_epochs": 5}, hints, default_epochs=3)
    assert (plan.max_seq_length, plan.max_seq_length_source, plan.epochs) == (384, "the base model's default", 5.0)
    plan = budget("", {}, None, default_epochs=3)
    assert (plan.max_seq_length, plan.epochs) == (None, 3.0) and isinstance(plan.counter, Estimate)
    plan = budget(str(word_tokenizer), {}, ("/nowhere", {}), default_epochs=3)  # TOKENIZER_DIR wins
    assert isinstance(plan.counter, TokenizerCounter) and plan.note == ""


def test_base_model_hints_build_nothing(tmp_path, word_tokenizer):
    tokenizer_dir, defaults = base_model_hints(tmp_path)
    assert tokenizer_dir == "" and defaults["max_seq_length"] == 384 and defaults["num_train_epochs"] == 3
    assert not (tmp_path / "workspace").exists()
    built = tmp_path / "workspace" / "base-models" / TINY_NAME / TINY_VERSION
    built.mkdir(parents=True)
    (built / "tokenizer.json").write_bytes((word_tokenizer / "tokenizer.json").read_bytes())
    assert base_model_hints(tmp_path)[0] == str(built)
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    assert base_model_hints(tmp_path, str(model)) == ("", {"max_seq_length": 2048})
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert base_model_hints(tmp_path, str(model)) == ("", {"max_seq_length": 4096})


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    """A small byte-level BPE (GPT-2's scheme): the kind whose token count the byte length bounds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(["alpha beta gamma delta"] * 50, trainer=trainer)
    directory = tmp_path_factory.mktemp("bpe")
    bpe.save(str(directory / "tokenizer.json"))
    return directory


def test_a_byte_level_bpe_is_verified_and_a_word_tokenizer_is_not(byte_bpe, word_tokenizer):
    assert TokenizerCounter(byte_bpe).bytes_bound and not TokenizerCounter(word_tokenizer).bytes_bound


def test_records_near_the_limit_are_counted_exactly_and_the_rest_sampled(byte_bpe):
    lines = [rec(i % 50 + 1, 3) for i in range(3000)]
    data = b"\n".join(lines) + b"\n"
    counter = TokenizerCounter(byte_bpe)
    exact = Validator(counter=counter, max_seq_length=200, max_invalid_fraction=1.0)
    list(exact.records([data]))
    sampled = Validator(counter=counter, max_seq_length=200, max_invalid_fraction=1.0,
                        expected_bytes=len(data) * 40)  # as if 40x larger: a low sampling rate
    list(sampled.records([data]))
    e, s = exact.report(), sampled.report()
    # every record that could reach the limit was counted: the same truncation verdicts, line by line
    assert s.errors == e.errors and s.warnings == e.warnings and s.tokens.tokens_cut == e.tokens.tokens_cut
    assert e.tokens.sample is None and e.tokens.records_counted == 3000
    t = s.tokens
    assert t.sample is not None and 0 < t.sample.records < t.records_bounded
    assert t.records_counted + t.records_bounded == 3000 and t.records_counted > 0
    # the sample's estimate of the total is within its stated error (a generous 3x for a 95% interval)
    assert abs(t.record_tokens - e.tokens.record_tokens) <= 3 * max(1, t.sample.record_tokens_error_95)


def test_without_an_override_max_seq_length_is_the_tokenizers_model_max_length(byte_bpe):
    (byte_bpe / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))
    plan = budget(str(byte_bpe))
    assert plan.max_seq_length == 4096 and "tokenizer_config.json" in plan.max_seq_length_source
    assert budget(str(byte_bpe), {"max_seq_length": 100}).max_seq_length == 100


def test_counts_do_not_depend_on_how_the_records_are_batched(byte_bpe, monkeypatch):
    """The tokenizer counts batches in a worker thread while the next batch is read: batches of one record
    (many in flight, one after another) give the same report as one batch of everything."""
    import shared.validation.validator as validator

    data = b"\n".join(rec(i % 40 + 1, i % 7 + 1) for i in range(400)) + b"\n"
    reports = []
    for batch_bytes in (1, 1 << 30):
        monkeypatch.setattr(validator, "BATCH_BYTES", batch_bytes)
        v = Validator(counter=TokenizerCounter(byte_bpe), max_seq_length=60, max_invalid_fraction=1.0)
        lines = sorted(r.line for r in v.records([data]))
        reports.append((lines, v.report()))
    (lines_1, one), (lines_all, everything) = reports
    assert lines_1 == lines_all and one == everything
    assert one.tokens.records_counted == one.valid_records > 0 and one.tokens.truncated_records > 0 and one.errors


def _sentencepiece_bpe(directory, normalizer=None):
    """A small BPE in Llama 2's and Phi-3's tokenizer.json scheme: Prepend("▁") and Replace(" ", "▁"), no
    pre-tokenizer, byte_fallback."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizer or normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False, initial_alphabet=["▁"],
                                  special_tokens=["<unk>", "<|end|>", *(f"<0x{b:02X}>" for b in range(256))])
    bpe.train_from_iterator(["alpha beta gamma delta"] * 50, trainer=trainer)
    bpe.save(str(directory / "tokenizer.json"))
    return directory


def test_a_sentencepiece_style_bpe_is_bounded_by_its_bytes_plus_one_and_nfkc_is_not(tmp_path):
    from tokenizers import normalizers

    counter = TokenizerCounter(_sentencepiece_bpe(tmp_path))
    assert counter.bytes_bound and counter.bound_extra == 1
    # the proof's worst cases hold: characters outside the vocabulary fall back to their bytes
    texts = ["x", " ", "ﬁ東京 €", "\U0001F600 a", "alpha beta", "q" * 30]
    assert all(n <= len(t.encode()) + 1 for n, t in zip(counter.count(texts), texts))
    (tmp_path / "nfkc").mkdir()
    nfkc = normalizers.Sequence([normalizers.NFKC(), normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    assert not TokenizerCounter(_sentencepiece_bpe(tmp_path / "nfkc", nfkc)).bytes_bound  # "ﬁ" -> "fi" lengthens


def test_with_a_sentencepiece_style_bpe_truncation_verdicts_match_counting_every_record(tmp_path):
    counter = TokenizerCounter(_sentencepiece_bpe(tmp_path))
    data = b"\n".join(rec(i % 300 + 1, 3) for i in range(3000)) + b"\n"
    exact = Validator(counter=counter, max_seq_length=200, max_invalid_fraction=1.0)
    sampled = Validator(counter=counter, max_seq_length=200, max_invalid_fraction=1.0, expected_bytes=len(data) * 40)
    for v in (exact, sampled):
        list(v.records([data]))
    e, s = exact.report(), sampled.report()
    assert s.errors == e.errors and s.warnings == e.warnings and s.tokens.tokens_cut == e.tokens.tokens_cut
    assert e.tokens.truncated_records > 0 and 0 < s.tokens.records_bounded < 3000 and s.tokens.sample is not None


def test_the_sampled_total_follows_the_records_characters_within_its_stated_error(byte_bpe):
    """Records of very different lengths: the total of the records not counted is the sample's tokens per
    character times their characters (plus their chat-format tokens), so its stated error stays a small fraction
    of the total where a mean per record would be off by the spread of the lengths."""
    data = b"\n".join(rec((i * 7919) % 150 + 1, (i * 104729) % 90 + 1) for i in range(4000)) + b"\n"
    counter = TokenizerCounter(byte_bpe)
    exact, sampled = (Validator(counter=counter, max_invalid_fraction=1.0, expected_bytes=e)
                      for e in (None, len(data) * 20))
    for v in (exact, sampled):
        list(v.records([data]))
    e, s = exact.report().tokens, sampled.report().tokens
    assert e.sample is None and s.sample is not None and s.sample.records < 400
    assert abs(s.record_tokens - e.record_tokens) <= 3 * s.sample.record_tokens_error_95
    assert s.sample.record_tokens_error_95 < 0.02 * e.record_tokens
    assert abs(s.trained_tokens_per_epoch - e.trained_tokens_per_epoch) <= 3 * s.sample.record_tokens_error_95
