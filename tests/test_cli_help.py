"""--help: every flag says what it does and shows its default at most once; --out_dir's stated
default is the folder a run really uses."""

from __future__ import annotations

import argparse
import re

import pytest
from decision_transformer.run import evaluate_checkpoint, export, hub, plots
from decision_transformer.run.config import build_parser, resolve

PARSERS = {
    "experiment": lambda: build_parser(qwen=False),
    "experiment_qwen": lambda: build_parser(qwen=True),
    "evaluate": evaluate_checkpoint.build_parser,
    "plot": plots.build_parser,
    "export": export.build_parser,
    "evaluate_pretrained": export.build_eval_parser,
    "push_to_hub": hub.build_parser,
}


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_flag_has_help_and_one_default(name):
    parser = PARSERS[name]()
    formatter = parser.formatter_class(parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        text = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
        assert text.lower().count("default") <= 1, f"{name} {action.dest}: {text}"


@pytest.mark.parametrize("argv,backbone", [([], "gpt2"), (["--model_type", "bc"], "gpt2")])
def test_out_dir_help_names_the_folder_used(argv, backbone):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "out_dir")
    template = re.search(r"default: (runs/\S+?)[,)]", action.help)[1]
    cfg = resolve(parser.parse_args(["--env", "hopper", "--seed", "3", *argv]), backbone)
    assert template.format(**cfg.to_dict()) == cfg.out_dir


def test_qwen_out_dir():
    parser = build_parser(qwen=True)
    cfg = resolve(parser.parse_args(["--env", "humanoid-expert-v2"]), "qwen3")
    assert cfg.out_dir == "runs/humanoid-expert-dt-qwen3-seed0"
