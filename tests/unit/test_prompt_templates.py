"""Prompt templates: rendering, validation, resolution order, the request-id record, and one behaviour everywhere."""

from __future__ import annotations

import pytest

from rlhf.v1 import policy_pb2
from services.common.config import load_config
from services.common.prompt_templates import (
    PromptTemplate,
    Templates,
    TemplateSettings,
    load_templates,
    tagged_request_id,
    template_of,
)
from services.common.prompts import PromptRow, load_prompts
from services.loadtest.config import LoadTestConfig
from services.loadtest.workload import PolicyWorkload
from services.trainer.config import TrainerConfig
from services.trainer.evaluate import EvaluateConfig
from services.trainer.rollout import SamplingSettings, generate

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


def test_render_puts_the_system_prompt_before_the_formatted_prompt(template_file):
    templates = load_templates(template_file)
    assert templates["critic"].render("Dune") == "You are a terse critic.\n\nReview in two sentences: Dune"
    assert templates["inline"].render("Dune") == "[Be kind.] Dune {braces}"  # placed by the format, braces escaped
    assert templates["plain"].render("Dune") == "Dune"


@pytest.mark.parametrize(
    "name, fmt, message",
    [
        ("has-dash", "{prompt}", "1-24 letters"),
        ("x" * 25, "{prompt}", "1-24 letters"),
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
    assert Templates().render(PromptRow("p", None)) == ("p", "none")
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        Templates(load_templates(template_file), default="nope")
    with pytest.raises(ValueError, match="task rules: unknown template"):
        Templates({}, task_templates={"rules": "critic"})
    with pytest.raises(ValueError, match="rows name unknown templates \\['ghost'\\]"):
        templates.check_rows([PromptRow("p", None, "", "ghost")], "data.jsonl")


def test_the_request_id_records_the_template():
    assert template_of(tagged_request_id("train-step-3", "critic")) == "critic"
    assert template_of(tagged_request_id("loadtest-7", "none")) == "none"
    assert template_of("loadtest-7") is None
    assert len(tagged_request_id("train-step-999999", "x" * 24)) <= 64  # the policy's request-id limit


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
    assert (
        client.requests[0].prompts[0].text
        == load.prompts[0].text
        == "You are a terse critic.\n\nReview in two sentences: Dune"
    )
    assert template_of(client.requests[0].request_id) == template_of(load.request_id) == "critic"


def test_generate_sends_one_request_per_template_and_keeps_row_order(template_file):
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
    assert [r.request_id for r in client.requests] == ["train-step-2-tpl_critic", "train-step-2-tpl_none"]
    assert [len(r.prompts) for r in client.requests] == [2, 1]
    assert client.requests[0].sampling.seed != client.requests[1].sampling.seed  # independent random streams
    assert [r.samples[0].text for r in response.results] == [
        "train-step-2-tpl_critic:aaaa",
        "train-step-2-tpl_none:bbbb",
        "train-step-2-tpl_critic:cccc",
    ]
