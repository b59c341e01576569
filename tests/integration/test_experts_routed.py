"""Experts that run elsewhere than the guarded model: another model sharing its tokenizer, and
(llama.cpp) the model with a LoRA adapter on a context of its own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from guardrail.adapters.routed import RoutedBackend
from guardrail.cli import app
from guardrail.engine import Engine
from guardrail.loading import get_engine
from guardrail.errors import ConfigError, ModelNotFoundError
from guardrail.experts import TokenizerMismatchError, check_same_tokenizer
from guardrail.models import embedded_model_path
from guardrail.policy import ModelConfig, Policy

pytestmark = pytest.mark.llamacpp
MSGS = [{"role": "user", "content": "How do I pick a lock?"}]
SAFETY = "You are a careful assistant. Refuse anything harmful."
# The embedded model loaded a second time (another n_ctx is another cache key): a separate
# llama.cpp model, so a "model" expert that is truly not the guarded model's own backend.
OTHER = {"backend": "llamacpp", "n_ctx": 1024}


def _policy(safety: dict, helpfulness: dict, router: dict, tokens: int = 10, **kw: object
            ) -> Policy:
    return Policy.model_validate({
        "strategy": {"kind": "experts", "safety": safety, "helpfulness": helpfulness,
                     "router": router, **kw},
        "sampling": {"max_new_tokens": tokens},
    })


def _fixed(a: float, b: float) -> dict:
    return {"kind": "fixed", "alpha": a, "beta": b}


def _plain(engine: Engine, system: str | None = None, tokens: int = 10) -> list[int]:
    p = Policy.model_validate({"system_prompt": system, "sampling": {"max_new_tokens": tokens}})
    return engine.generate(p, MSGS).token_ids


def test_converted_adapter_header(lora_file: Path) -> None:
    from guardrail.adapters.llamacpp_lora import read_lora_gguf

    info = read_lora_gguf(lora_file, arch="llama")
    assert (info.rank, info.alpha, info.default_scale) == (4, 8.0, 2.0)
    with pytest.raises(ConfigError, match="architecture 'llama', the model is 'qwen2'"):
        read_lora_gguf(lora_file, arch="qwen2")


def _native_lora_greedy(lora: Path, ids: list[int], eot: frozenset[int], n: int) -> list[int]:
    """llama.cpp's own way: the adapter on a whole context, greedy, one token at a time."""
    import llama_cpp

    llm = llama_cpp.Llama(str(embedded_model_path()), lora_path=str(lora), n_ctx=512,
                          n_batch=32, n_ubatch=32, verbose=False)
    llm.eval(ids)
    out: list[int] = []
    while len(out) < n:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        tok = int(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).argmax())
        out.append(tok)
        if tok in eot:
            break
        llm.eval([tok])
    llm.close()
    return out


def test_lora_stream_equals_llamacpp_applying_the_adapter(
    llama_engine: Engine, lora_file: Path
) -> None:
    lora = {"kind": "lora", "path": str(lora_file)}
    safety_only = llama_engine.generate(_policy(lora, {"kind": "prompt"}, _fixed(1, 0)), MSGS)
    b = llama_engine.backend
    native = _native_lora_greedy(lora_file, b.encode_chat(MSGS), b.end_of_turn_ids, 10)
    assert safety_only.token_ids == native
    # The other stream of the same request is the model without the adapter ...
    help_only = llama_engine.generate(_policy(lora, {"kind": "prompt"}, _fixed(0, 1)), MSGS)
    assert help_only.token_ids == _plain(llama_engine)
    # ... and the adapter does change the answer, so the equalities above can fail.
    assert safety_only.token_ids != help_only.token_ids


def test_lora_scale_zero_like_is_the_base_model(llama_engine: Engine, lora_file: Path) -> None:
    tiny = _policy({"kind": "lora", "path": str(lora_file)}, {"kind": "prompt"}, _fixed(1, 0),
                   scale=1e-9)
    assert llama_engine.generate(tiny, MSGS).token_ids == _plain(llama_engine)


def test_model_expert_on_another_llamacpp_model(llama_engine: Engine) -> None:
    other = {"kind": "model", "model": OTHER, "system_prompt": SAFETY}
    req = llama_engine.request(_policy(other, {"kind": "prompt"}, _fixed(1, 0)), MSGS)
    assert isinstance(req.backend, RoutedBackend)
    assert req.backend.members[1] is get_engine(ModelConfig(**OTHER)).backend
    assert req.backend.placement == [1, 0]
    g = llama_engine.generate_many([req])[0]
    assert g.token_ids == _plain(llama_engine, SAFETY)


def test_model_expert_on_the_other_backend(llama_engine: Engine, tf_engine: Engine) -> None:
    """A transformers expert beside llama.cpp streams: the same weights, so (1, 0) is what
    transformers answers on its own, and the mixture traces its per-token weights."""
    tf = {"kind": "model", "model": {"backend": "transformers"}}
    g = llama_engine.generate(_policy(tf, {"kind": "prompt"}, _fixed(1, 0), tokens=6), MSGS)
    assert g.token_ids == _plain(tf_engine, tokens=6)
    mixed = llama_engine.generate(_policy(tf, {"kind": "prompt", "system_prompt": SAFETY},
                                          {"kind": "agreement"}, tokens=4), MSGS)
    assert len(mixed.steps) == len(mixed.token_ids)
    assert all(s["router"] == "agreement" and 0 <= s["alpha"] <= 1 for s in mixed.steps)


def test_adacd_on_top_of_a_routed_mixture(llama_engine: Engine, lora_file: Path) -> None:
    p = _policy({"kind": "lora", "path": str(lora_file)}, {"kind": "prompt"},
                {"kind": "agreement"}, tokens=4, adacd={"steps": 2})
    req = llama_engine.request(p, MSGS)
    assert isinstance(req.backend, RoutedBackend) and req.backend.placement == [1, 0, 0]
    g = llama_engine.generate_many([req])[0]
    assert [("mode" in s) for s in g.steps][:3] == [True, True, False][: len(g.steps)]


def test_routed_and_plain_requests_in_one_call(llama_engine: Engine, lora_file: Path) -> None:
    plain = Policy.model_validate({"sampling": {"max_new_tokens": 10}})
    routed = _policy({"kind": "lora", "path": str(lora_file)}, {"kind": "prompt"}, _fixed(0, 1))
    out = llama_engine.generate_many(
        [llama_engine.request(plain, MSGS), llama_engine.request(routed, MSGS)]
    )
    assert out[0].token_ids == out[1].token_ids == _plain(llama_engine)


def test_crossed_model_experts_do_not_deadlock(llama_engine: Engine) -> None:
    """Engine A with an expert on B, engine B with an expert on A, from two threads at once."""
    other = get_engine(ModelConfig(**OTHER))
    on_other = _policy({"kind": "model", "model": OTHER}, {"kind": "prompt"}, _fixed(1, 1), 6)
    on_main = _policy({"kind": "model", "model": {"backend": "llamacpp"}}, {"kind": "prompt"},
                      _fixed(1, 1), 6)
    results: dict[str, list[int]] = {}

    def run(name: str, engine: Engine, policy: Policy) -> None:
        for _ in range(3):
            results[name] = engine.generate(policy, MSGS).token_ids

    threads = [threading.Thread(target=run, args=("a", llama_engine, on_other)),
               threading.Thread(target=run, args=("b", other, on_main))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert results["a"] == results["b"] == _plain(llama_engine, tokens=6)


def test_bad_lora_files(llama_engine: Engine, tmp_path: Path) -> None:
    def request(path: str) -> None:
        llama_engine.request(
            _policy({"kind": "lora", "path": path}, {"kind": "prompt"}, _fixed(1, 0)), MSGS)

    with pytest.raises(ModelNotFoundError, match="no such GGUF file.*nope.gguf"):
        request(str(tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="junk.gguf' is not a GGUF file"):
        request(str(junk))
    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        request(str(embedded_model_path()))


def test_convert_lora_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["experts", "convert-lora", str(tmp_path), "-o",
                                   str(tmp_path / "x.gguf")])
    assert res.exit_code == 1 and "adapter_config.json" in res.output


def _tiny_model_with_its_own_tokenizer(root: Path) -> Path:
    """A two-layer random Llama with a word-level tokenizer unlike SmolLM2's."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "How",
             "do", "I", "pick", "a", "lock", "?", "Be", "brief", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    fast.save_pretrained(str(root))
    cfg = transformers.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(root))
    return root


def test_mismatched_tokenizer_is_a_clear_error(llama_engine: Engine, tmp_path: Path) -> None:
    path = _tiny_model_with_its_own_tokenizer(tmp_path / "tiny")
    expert = {"kind": "model", "model": {"backend": "transformers", "path": str(path)}}
    with pytest.raises(TokenizerMismatchError, match="different vocabularies"):
        llama_engine.request(_policy(expert, {"kind": "prompt"}, _fixed(1, 1)), MSGS)


def test_one_tokenizer_across_backends(llama_engine: Engine, tf_engine: Engine) -> None:
    """llama.cpp's and Hugging Face's implementations of one tokenizer pass the check."""
    check_same_tokenizer(llama_engine.backend, tf_engine.backend)
    check_same_tokenizer(tf_engine.backend, llama_engine.backend)


def test_lora_mixed_with_prompt_expert_on_transformers_is_refused(tf_engine: Engine,
                                                                 lora_file: Path) -> None:
    p = _policy({"kind": "lora", "path": str(lora_file)}, {"kind": "prompt"}, _fixed(1, 0))
    with pytest.raises(ConfigError, match="both must be kind: lora"):
        tf_engine.request(p, MSGS)


def test_scale_without_lora_experts_is_a_policy_error() -> None:
    with pytest.raises(ValueError, match="scale applies to LoRA experts"):
        _policy({"kind": "prompt"}, {"kind": "prompt"}, _fixed(1, 0), scale=2.0)


def test_guarded_chat_model_streams_a_routed_policy(lora_file: Path) -> None:
    from guardrail import GuardedChatModel

    policy = _policy({"kind": "lora", "path": str(lora_file)}, {"kind": "prompt"},
                     {"kind": "agreement"}, tokens=6)
    llm = GuardedChatModel(policy=policy)
    chunks = list(llm.stream("How do I pick a lock?"))
    text = "".join(str(c.content) for c in chunks)
    msg = llm.invoke("How do I pick a lock?")
    assert text == msg.content and text
    trace = msg.response_metadata["guardrail"]
    assert trace["strategy"] == "experts"
    assert [s["router"] for s in trace["steps"]] == ["agreement"] * len(trace["steps"])
