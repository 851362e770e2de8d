"""The policy's prompt rules: a system turn through the chat template, the template name, clear errors.

A real Hugging Face tokenizer (a word-level vocabulary built in memory, a Jinja chat
template) stands in for the served model's, so transformers renders the chat exactly as
it does in the server; the servicer runs over a fake engine that echoes the prompt length.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument
from services.policy.engine import SampleDelta
from services.policy.prompt_tokens import PromptEncoder
from services.policy.sampling import Limits, check_prompt_fields
from services.policy.server import PolicyServicer
from services.policy.weights import WeightManager

WORDS = ["[UNK]", "<", ">", "system", "user", "assistant", "be", "terse", "review", "dune"]
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
)
DROPS_SYSTEM = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}> {{ m['content'] }} {% endif %}{% endfor %}"
)


def tokenizer(chat_template: str | None = CHAT) -> PreTrainedTokenizerFast:
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    tok.chat_template = chat_template
    return tok


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.replace("<", "< ").replace(">", " >").split()]


def chat(text: str, system: str = "", template: str = "") -> policy_pb2.Prompt:
    return policy_pb2.Prompt(text=text, system=system, apply_chat_template=True, template=template)


def test_a_system_turn_is_rendered_before_the_user_turn():
    encoder = PromptEncoder(tokenizer())
    assert encoder.token_ids(0, chat("review dune", "be terse")) == ids(
        "<system> be terse <user> review dune <assistant>"
    )
    assert encoder.token_ids(0, chat("review dune")) == ids("<user> review dune <assistant>")
    raw = policy_pb2.Prompt(text="be terse review dune", template="critic")  # raw completion: the text as it is
    assert encoder.token_ids(0, raw) == ids("be terse review dune")


@pytest.mark.parametrize(
    "prompt, message",
    [
        (policy_pb2.Prompt(text="dune", system="be terse"), "system needs text with apply_chat_template"),
        (policy_pb2.Prompt(token_ids=[9], system="be terse"), "system needs text with apply_chat_template"),
        (policy_pb2.Prompt(), "exactly one of text or token_ids"),
        (chat("dune", template="x" * 65), "template 'x+': at most 64 letters"),
        (chat("dune", template="has space"), "template 'has space': at most 64"),
        (chat("dune", template="critic\n"), "template 'critic\\\\n': at most 64"),
    ],
)
def test_prompt_fields_that_do_not_fit_are_invalid(prompt, message):
    with pytest.raises(InvalidArgument, match=message) as raised:
        check_prompt_fields(3, prompt)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and str(raised.value).startswith("prompts[3]")


def test_template_names_of_up_to_64_letters_digits_dash_underscore_pass():
    check_prompt_fields(0, chat("dune", template="critic_v2-" + "x" * 54))


@pytest.mark.parametrize(
    "chat_template, reason",
    [(NO_SYSTEM, "it raises: System role not supported"), (DROPS_SYSTEM, "it drops system messages")],
)
def test_a_chat_template_without_a_system_role_is_a_clear_invalid_argument(chat_template, reason):
    encoder = PromptEncoder(tokenizer(chat_template))
    with pytest.raises(InvalidArgument, match=f"chat template has no system role \\({reason}"):
        encoder.token_ids(0, chat("review dune", "be terse"))
    assert encoder.token_ids(0, chat("review dune")) == ids("<user> review dune")  # without a system turn it works


def test_a_model_without_a_chat_template_says_so():
    with pytest.raises(InvalidArgument, match="has no chat template; send apply_chat_template=false"):
        PromptEncoder(tokenizer(None)).token_ids(1, chat("dune"))


class EchoEngine:
    """The engine adapter's generate surface: one token, the prompt's length."""

    description = "echo"
    transfer_workers = 0

    async def generate(self, request_id, prompt_token_ids, spec, sample_index, prompt_index=0):
        yield SampleDelta([len(prompt_token_ids)], [-0.5], "x", "length")


def test_the_servicer_refuses_bad_prompts_and_keeps_serving(tmp_path):
    servicer = PolicyServicer(
        engine=EchoEngine(),
        tokenizer=tokenizer(),
        limits=Limits(4, 2, 8, 64, len(WORDS)),
        model_name="m",
        weights=WeightManager(None, manifest={}, staging=tmp_path, max_push_bytes=1, drain_timeout_s=1),
    )
    servicer.mark_serving()

    def generate(*prompts):
        request = policy_pb2.GenerateRequest(prompts=prompts, sampling=policy_pb2.SamplingParams(max_tokens=1))
        return asyncio.run(servicer.Generate(request, None))

    with pytest.raises(InvalidArgument, match="prompts\\[1\\]: system needs text with apply_chat_template"):
        generate(chat("dune"), policy_pb2.Prompt(text="dune", system="be terse"))
    with pytest.raises(InvalidArgument, match="prompts\\[0\\]: template"):
        generate(chat("dune", template="no/slash"))
    reply = generate(chat("review dune", "be terse", "critic"), chat("dune"))
    assert list(reply.results[0].prompt_token_ids) == ids("<system> be terse <user> review dune <assistant>")
    assert list(reply.results[1].prompt_token_ids) == ids("<user> dune <assistant>")
    assert reply.results[0].samples[0].token_ids == [len(reply.results[0].prompt_token_ids)]
