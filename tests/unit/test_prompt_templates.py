"""Prompt templates: rendering into Prompt fields, validation, resolution order, and one behaviour everywhere."""

from __future__ import annotations

import pytest

from rlhf.v1 import policy_pb2
from services.common.config import load_config
from services.common.prompt_templates import (
    PromptTemplate,
    Templates,
    TemplateSettings,
    load_templates,
)
from services.common.prompts import PromptRow, load_prompts
from services.loadtest.config import LoadTestConfig
from services.loadtest.workload import PolicyWorkload
from services.trainer.config import TrainerConfig
from services.trainer.evaluate import EvaluateConfig
from services.trainer.rollout import SamplingSettings, generate, sample_seed

TOML = """
[templates.critic]
system = "You are a terse critic."
format = "Review in two sentences: {prompt}"

[templates.inline]
system = "Be kind."
format = "[{system}] {prompt} {{braces}}"

[templates.plain]
"""


@pytest.fixture
def template_file(tmp_path):
    path = tmp_path / "templates.toml"
    path.write_text(TOML)
    return path


def test_render_gives_the_system_prompt_its_own_turn_with_a_chat_template(template_file):
    templates = load_templates(template_file)
    assert templates["critic"].render("Dune") == ("Review in two sentences: Dune", "You are a terse critic.")
    # placed by the format: stays in the user text, no separate system turn; escaped braces stay literal
    assert templates["inline"].render("Dune") == ("[Be kind.] Dune {braces}", "")
    assert templates["plain"].render("Dune") == ("Dune", "")


def test_render_without_a_chat_template_puts_the_system_prompt_before_the_text(template_file):
    templates = load_templates(template_file)
    assert templates["critic"].render("Dune", chat=False) == (
        "You are a terse critic.\n\nReview in two sentences: Dune",
        "",
    )
    assert templates["inline"].render("Dune", chat=False) == ("[Be kind.] Dune {braces}", "")
    literal = PromptTemplate("lit", "S", "{{system}} {prompt}")  # escaped braces: a literal, not the field
    assert literal.render("p") == ("{system} p", "S")


@pytest.mark.parametrize(
    "name, fmt, message",
    [
        ("has space", "{prompt}", "1-64 letters"),
        ("x" * 65, "{prompt}", "1-64 letters"),
        ("", "{prompt}", "1-64 letters"),
        ("critic\n", "{prompt}", "1-64 letters"),
        ("ok", "no placeholder", "must contain {prompt}"),
        ("ok", "{prompt} {user}", "no fields but"),
        ("ok", "{prompt", "not a valid format string"),
    ],
)
def test_bad_templates_are_refused(name, fmt, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(name, "", fmt)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[templates.a]\nformat = 'x'\n", "must contain {prompt}"),
        ("[templates.a]\nstyle = 'x'\n", "unknown keys \\['style'\\]"),
        ("[other]\n", "no \\[templates.<name>\\] tables"),
        ("[templates.none]\n", "reserved"),
        ("[templates\n", "not valid TOML"),
    ],
)
def test_bad_template_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_templates(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_templates(tmp_path / "missing.toml")


def test_a_row_gets_its_own_then_its_tasks_then_the_default_template(template_file):
    templates = Templates(load_templates(template_file), default="plain", task_templates={"rules": "inline"})
    assert templates.resolve(PromptRow("p", None, "rules", "critic")).name == "critic"
    assert templates.resolve(PromptRow("p", None, "rules")).name == "inline"
    assert templates.resolve(PromptRow("p", None, "other")).name == "plain"
    assert Templates().prompt(PromptRow("p", None), True) == policy_pb2.Prompt(text="p", apply_chat_template=True)
    assert Templates().resolve(PromptRow("p", None)).name == "none"
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        Templates(load_templates(template_file), default="nope")
    with pytest.raises(ValueError, match="task rules: unknown template"):
        Templates({}, task_templates={"rules": "critic"})
    with pytest.raises(ValueError, match="rows name unknown templates \\['ghost'\\]"):
        templates.check_rows([PromptRow("p", None, "", "ghost")], "data.jsonl")


def test_the_prompt_carries_user_text_system_turn_and_template_name(template_file):
    templates = Templates(load_templates(template_file))
    row = PromptRow("Dune", None, "", "critic")
    assert templates.prompt(row, apply_chat_template=True) == policy_pb2.Prompt(
        text="Review in two sentences: Dune",
        system="You are a terse critic.",
        apply_chat_template=True,
        template="critic",
    )
    assert templates.prompt(row, apply_chat_template=False) == policy_pb2.Prompt(
        text="You are a terse critic.\n\nReview in two sentences: Dune", template="critic"
    )
    inline = templates.prompt(PromptRow("Dune", None, "", "inline"), apply_chat_template=True)
    assert (inline.text, inline.system, inline.template) == ("[Be kind.] Dune {braces}", "", "inline")
    longest = PromptTemplate("x-" * 32)  # the longest name the policy accepts as Prompt.template
    assert Templates({longest.name: longest}, longest.name).prompt(PromptRow("p", None), True).template == longest.name


def test_settings_in_every_program_with_clear_errors(template_file, capsys):
    argv = ["--templates.file", str(template_file), "--templates.default", "critic"]
    assert load_config(TrainerConfig, argv).templates == TemplateSettings(str(template_file), "critic")
    assert load_config(EvaluateConfig, argv).templates.default == "critic"
    assert load_config(LoadTestConfig, ["--target", "127.0.0.1:1", *argv]).templates.default == "critic"
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--templates.default", "critic"])
    assert "templates.default='critic' needs templates.file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--help"])
    assert "--templates.file" in capsys.readouterr().out


class _Recorder:
    """Stands in for the policy client: records requests, answers with one empty sample per prompt."""

    def __init__(self):
        self.requests = []

    def generate(self, request):
        self.requests.append(request)
        return policy_pb2.GenerateResponse(
            results=[
                policy_pb2.PromptResult(samples=[policy_pb2.Sample(text=f"{request.request_id}:{p.text[-4:]}")])
                for p in request.prompts
            ]
        )


def test_trainer_evaluator_and_load_tester_send_the_same_text(template_file, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "Dune", "template": "critic"}\n')
    templates = Templates(load_templates(template_file))
    client = _Recorder()
    generate(client, load_prompts(data), SamplingSettings(1, 8, 1.0, 1.0, True, 0), 0, "train-step", templates)
    load = PolicyWorkload(str(data), vocab_size=10, templates=templates).next_request()
    assert client.requests[0].prompts[0] == load.prompts[0]
    assert (load.prompts[0].text, load.prompts[0].system, load.prompts[0].template) == (
        "Review in two sentences: Dune",
        "You are a terse critic.",
        "critic",
    )
    assert (client.requests[0].request_id, load.request_id) == ("train-step-0", "loadtest-1")  # no tags any more


def test_generate_sends_one_request_with_each_rows_template_in_row_order(template_file):
    rows = [PromptRow("aaaa", None, "", "critic"), PromptRow("bbbb", None), PromptRow("cccc", None, "", "critic")]
    client = _Recorder()
    response = generate(
        client,
        rows,
        SamplingSettings(1, 8, 1.0, 1.0, True, 5),
        2,
        "train-step",
        Templates(load_templates(template_file)),
    )
    (request,) = client.requests
    assert request.request_id == "train-step-2" and request.sampling.seed == sample_seed(5, 2)
    assert [(p.template, p.system) for p in request.prompts] == [
        ("critic", "You are a terse critic."),
        ("", ""),
        ("critic", "You are a terse critic."),
    ]
    assert [r.samples[0].text for r in response.results] == [
        "train-step-2:aaaa",
        "train-step-2:bbbb",
        "train-step-2:cccc",
    ]
