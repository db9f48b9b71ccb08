"""The token budget's facts about the base model (shared.model_hints), as shared.bootstrap wires them: TOKENIZER_DIR
first, else the backend's own folder, else the port's `base_model_tokenizer`; refusals kept, transient faults asked
again; the report then says estimate and why."""

from __future__ import annotations

import pytest

from shared.bootstrap import bootstrap
from shared.ml.port import PermanentError, TransientError
from shared.run_store import InMemoryRunStore
from shared.tokens import ModelHints, budget
from tests.fakes import FakeMLBackend, RecordingSender, write_word_tokenizer


@pytest.fixture
def tokenizer_dir(tmp_path):
    write_word_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    return str(tmp_path)


def services(settings, fake):
    return bootstrap(settings, ml=fake, messages=RecordingSender(), runs=InMemoryRunStore())


def test_the_base_models_tokenizer_is_asked_once_and_sets_the_counts_and_the_max_length(offline_settings,
                                                                                        tokenizer_dir):
    fake = FakeMLBackend()
    fake.set_tokenizer(offline_settings.base_model, tokenizer_dir)
    svc = services(offline_settings, fake)
    hints = svc.model_hints()
    assert hints.tokenizer_dir == tokenizer_dir and hints.note == ""
    assert svc.model_hints() is hints and fake.calls.count("base_model_tokenizer") == 1
    plan = budget(offline_settings.tokenizer_dir, {}, hints)
    assert plan.counter.exact and plan.max_seq_length == 2048 and "tokenizer_config.json" in plan.max_seq_length_source


def test_tokenizer_dir_wins_and_nothing_is_fetched(offline_settings, tokenizer_dir):
    fake = FakeMLBackend()
    svc = services(offline_settings.replace(tokenizer_dir=tokenizer_dir), fake)
    assert svc.model_hints().note == "" and "base_model_tokenizer" not in fake.calls
    assert budget(tokenizer_dir, {}, svc.model_hints()).counter.exact


def test_a_refusal_is_kept_and_said_a_transient_fault_is_asked_again(offline_settings):
    fake = FakeMLBackend()
    svc = services(offline_settings, fake)
    fake.fail_next("base_model_tokenizer", TransientError("registry throttled (429)"))
    first = svc.model_hints()
    assert "429" in first.note and "TOKENIZER_DIR" in first.note
    second = svc.model_hints()  # asked again: the fake's base model has no tokenizer files
    assert "hold no tokenizer.json" in second.note and fake.calls.count("base_model_tokenizer") == 2
    assert svc.model_hints() is second and fake.calls.count("base_model_tokenizer") == 2
    plan = budget("", {}, second)
    assert plan.counter.method.startswith("estimate") and "hold no tokenizer.json" in plan.note


def test_a_refused_data_hint_does_not_stop_ingestion(offline_settings):
    fake = FakeMLBackend()
    fake.data_hints = lambda: (_ for _ in ()).throw(PermanentError("the tag model_specific_defaults is bad"))
    hints = services(offline_settings, fake).model_hints()
    assert "model_specific_defaults" in hints.note and hints.tokenizer_dir == ""


def test_the_context_window_bounds_truncation_only_without_a_tokenizer(tokenizer_dir):
    hints = ModelHints("", {}, "no tokenizer", 4096)
    plan = budget("", {}, hints)
    assert plan.max_seq_length == 4096 and "textContextWindow" in plan.max_seq_length_source
    assert plan.note == "no tokenizer"
    assert budget("", {}, hints._replace(tokenizer_dir=tokenizer_dir)).max_seq_length == 2048
    assert budget("", {"max_seq_length": 512}, hints).max_seq_length == 512
    assert budget("", {}, ("", {"max_seq_length": 384})).max_seq_length == 384  # a (folder, defaults) pair reads too
