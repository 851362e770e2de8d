"""Named prompt templates: a system prompt plus a format around the row's prompt, the same in every program.

The trainer, the evaluator and the load tester all turn a prompt row into the
`rlhf.v1.Prompt` they send with `Templates.prompt`, so a template tuned in training is
exactly what evaluation and load tests send. Templates live in a TOML file:

    [templates.critic]
    system = "You are a terse literary critic."
    format = "Review this book in two sentences: {prompt}"

`format` must contain `{prompt}` and may contain `{system}` (literal braces: `{{ }}`).
With the model's chat template (apply_chat_template, the programs' default) the system
prompt travels as the Prompt's own `system` turn, which the policy renders before the
user turn; a format that places `{system}` itself keeps it in the user text and sends
no separate system turn. A raw text completion has no turns, so there the system
prompt goes before the formatted prompt, separated by a blank line.

Which template a row gets: the row's own `template`, else its task's, else the
configured default, else none (the prompt unchanged, reported as "none").

The template's name travels as `Prompt.template`; the policy records it with every
sample, so feedback on live traffic can be grouped by template (ListPrompts,
ListRatings and ListPreferences return it).
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rlhf.v1 import policy_pb2
from services.common.config import option

NONE = "none"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a template's name (fullmatch): also what Prompt.template accepts
_FIELDS = {"prompt", "system"}


def _format_fields(fmt: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(fmt) if field is not None}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str = ""
    format: str = "{prompt}"

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"template name {self.name!r}: 1-64 letters, digits, '-' or '_'")
        try:
            fields = _format_fields(self.format)
        except ValueError as exc:
            raise ValueError(f"template {self.name!r}: format is not a valid format string ({exc})") from exc
        if "prompt" not in fields or not fields <= _FIELDS:
            raise ValueError(
                f"template {self.name!r}: format must contain {{prompt}} and no fields but {{prompt}}, {{system}}; "
                f"got {sorted(fields)}"
            )

    def render(self, prompt: str, chat: bool = True) -> tuple[str, str]:
        """(user text, system turn) for `prompt`.

        With a chat template (`chat`) the system prompt is its own turn unless the format
        places `{system}` itself. Without one (raw text completion) there are no turns, so
        a system prompt the format does not place goes before the text, after a blank line.
        """
        text = self.format.format(prompt=prompt, system=self.system)
        if not self.system or "system" in _format_fields(self.format):
            return text, ""
        if chat:
            return text, self.system
        return f"{self.system}\n\n{text}", ""


IDENTITY = PromptTemplate(NONE)


@dataclass(frozen=True)
class TemplateSettings:
    """Named prompt templates (system prompt + format) applied to every prompt sent."""

    file: str = option("", "TOML with [templates.<name>] tables (system, format). Empty: no templates.")
    default: str = option(
        "", "Template for rows that name none (neither theirs nor their task's). Empty: the prompt as it is."
    )

    def __post_init__(self) -> None:
        if self.default and not self.file:
            raise ValueError(f"templates.default={self.default!r} needs templates.file (the TOML that defines it)")


def read_named_tables(path: str | Path, kind: str) -> dict:
    """The [<kind>.<name>] tables of a TOML file (templates, tasks); errors name the file."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"{kind} {path}: cannot read it ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{kind} {path}: not valid TOML ({exc})") from exc
    tables = document.get(kind)
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{kind} {path}: no [{kind}.<name>] tables")
    return tables


def load_templates(path: str | Path) -> dict[str, PromptTemplate]:
    """[templates.<name>] tables of a TOML file; errors name the file and the template."""
    tables = read_named_tables(path, "templates")
    templates = {}
    for name, table in tables.items():
        unknown = set(table) - {"system", "format"} if isinstance(table, dict) else {"(not a table)"}
        if unknown:
            raise ValueError(
                f"templates {path}: [templates.{name}] has unknown keys {sorted(unknown)} (known: system, format)"
            )
        try:
            templates[name] = PromptTemplate(name, str(table.get("system", "")), str(table.get("format", "{prompt}")))
        except ValueError as exc:
            raise ValueError(f"templates {path}: {exc}") from exc
    if NONE in templates:
        raise ValueError(f"templates {path}: {NONE!r} is reserved for 'no template'")
    return templates


class Templates:
    """Resolves and applies the template of each prompt row."""

    def __init__(
        self,
        templates: dict[str, PromptTemplate] | None = None,
        default: str = "",
        task_templates: dict[str, str] | None = None,
    ) -> None:
        self.templates = dict(templates or {})
        self.default, self.task_templates = default, dict(task_templates or {})
        for where, name in [
            ("templates.default", default),
            *((f"task {t}", n) for t, n in self.task_templates.items()),
        ]:
            if name and name not in self.templates:
                raise ValueError(f"{where}: unknown template {name!r} (defined: {sorted(self.templates) or 'none'})")

    @classmethod
    def from_settings(cls, settings: TemplateSettings, task_templates: dict[str, str] | None = None) -> Templates:
        return cls(load_templates(settings.file) if settings.file else {}, settings.default, task_templates)

    def check_rows(self, rows, source: str) -> None:
        """Every template a row names must exist (fail at start, not mid-run)."""
        missing = sorted({row.template for row in rows if row.template and row.template not in self.templates})
        if missing:
            raise ValueError(
                f"{source}: rows name unknown templates {missing} (defined: {sorted(self.templates) or 'none'})"
            )

    def resolve(self, row) -> PromptTemplate:
        name = row.template or self.task_templates.get(getattr(row, "task", ""), "") or self.default
        if not name:
            return IDENTITY
        if name not in self.templates:
            raise ValueError(f"unknown template {name!r} (defined: {sorted(self.templates) or 'none'})")
        return self.templates[name]

    def prompt(self, row, apply_chat_template: bool) -> policy_pb2.Prompt:
        """The Prompt to send for `row`: user text, system turn (chat only) and the template's name.

        A row without a template sends its prompt unchanged and no template name.
        """
        template = self.resolve(row)
        text, system = template.render(row.prompt, chat=apply_chat_template)
        return policy_pb2.Prompt(
            text=text,
            system=system,
            apply_chat_template=apply_chat_template,
            template="" if template is IDENTITY else template.name,
        )
