"""A Generate request's prompts as token ids: given ids, raw text, or [system, user] through the chat template.

Kept apart from the servicer and free of vLLM, so the rules and their error messages are
unit-testable with a real (tiny) Hugging Face tokenizer. Checks that need no tokenizer
(field combinations, the template name) are in sampling.py with the other request rules.
"""

from __future__ import annotations

import jinja2

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument
from services.policy.sampling import check_prompt_fields

_PROBE = "rlhf-system-probe-7f3a"  # a system text no chat template would invent


class PromptEncoder:
    """Turns `rlhf.v1.Prompt`s into the token ids the engine gets, with the served model's tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._system_refusal: str | None = None  # why the chat template cannot take a system turn ("" if it can)

    def token_ids(self, index: int, prompt: policy_pb2.Prompt) -> list[int]:
        """The prompt's token ids (not yet checked against vocabulary and context: check_token_ids does)."""
        check_prompt_fields(index, prompt)
        if prompt.token_ids:
            return list(prompt.token_ids)
        if not prompt.apply_chat_template:
            return self.tokenizer.encode(prompt.text, add_special_tokens=False)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InvalidArgument(
                f"prompts[{index}]: the served model has no chat template; send apply_chat_template=false"
            )
        messages = [{"role": "user", "content": prompt.text}]
        if prompt.system:
            refusal = self.system_refusal()
            if refusal:
                raise InvalidArgument(
                    f"prompts[{index}]: the served model's chat template has no system role ({refusal}); "
                    "send the system prompt inside text instead"
                )
            messages.insert(0, {"role": "system", "content": prompt.system})
        try:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except jinja2.TemplateError as exc:  # templates refuse what they cannot render with raise_exception
            raise InvalidArgument(f"prompts[{index}]: the served model's chat template refused it: {exc}") from exc
        return _as_list(encoded)

    def system_refusal(self) -> str:
        """Why the chat template cannot render a system turn, or "" when it can (probed once).

        Templates differ: some raise (Gemma: "System role not supported"), some silently
        drop the system message; either way the caller must hear it, not get a prompt
        without the instructions it sent.
        """
        if self._system_refusal is None:
            messages = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "hello"}]
            try:
                rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                self._system_refusal = "" if _PROBE in rendered else "it drops system messages"
            except jinja2.TemplateError as exc:
                self._system_refusal = f"it raises: {exc}"
        return self._system_refusal


def _as_list(encoded) -> list[int]:
    """apply_chat_template returns a list or a BatchEncoding depending on the transformers version."""
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])
