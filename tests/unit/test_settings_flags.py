"""One home per setting: every flag derived from a settings dataclass shows the field's default and
help, and `serve`'s settings layer as flags given > the `$T2L_VLLM_CONFIG` file > the dataclass."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from t2l_vllm.cache import CacheSettings
from t2l_vllm.cli import build_parser
from t2l_vllm.cli.output import quiet_vllm_options
from t2l_vllm.cli.serve import service_settings
from t2l_vllm.cli.settings_args import Unset
from t2l_vllm.encoder import DEFAULT_ENCODER, ENCODER_PRESETS
from t2l_vllm.errors import ConfigError
from t2l_vllm.generator import GeneratorSettings
from t2l_vllm.hypernet.config import EncoderSettings
from t2l_vllm.router import RouterSettings
from t2l_vllm.service.settings import ServiceSettings, load_settings_file
from t2l_vllm.train.recon import ReconSettings


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from command_parsers(sub, (*path, name))


def derived_flags():
    return [
        (" ".join(path), action)
        for path, parser in command_parsers(build_parser())
        for action in parser._actions
        if hasattr(action, "setting")
    ]


def test_every_derived_flag_has_its_fields_default_and_help():
    flags = derived_flags()
    assert len(flags) > 40  # serve, demo, generate, route, init-hypernet and train all derive theirs
    for command, action in flags:
        setting = action.setting
        where = f"t2l-vllm {command} {action.option_strings[0]}"
        assert isinstance(action.default, Unset), where
        assert action.default.default == setting.default, where
        text = action.help % {"default": action.default}
        assert f"default: {action.default}" in text, where
        assert setting.help, f"{where}: its field has no help"
        assert text.startswith(setting.help), where


@pytest.mark.parametrize(
    "command,flag,value",
    [
        ("train recon", "--steps", ReconSettings().steps),
        ("train recon", "--weight-decay", ReconSettings().weight_decay),
        ("serve", "--adapter-cache-entries", CacheSettings().max_entries),
        ("serve", "--adapter-cache-mib", CacheSettings().max_bytes / 2**20),
        ("serve", "--max-description-chars", GeneratorSettings().max_description_chars),
        ("serve", "--router-top-k", RouterSettings().top_k),
        ("init-hypernet", "--encoder", EncoderSettings().model),
    ],
)
def test_named_flags_show_the_dataclass_default(command, flag, value):
    action = next(a for c, a in derived_flags() if c == command and flag in a.option_strings)
    assert action.default.default == value


def test_the_default_encoder_and_the_presets_are_written_once():
    assert DEFAULT_ENCODER == EncoderSettings().model
    assert all(name == preset.model for name, preset in ENCODER_PRESETS.items())


def parse_serve(*argv: str) -> argparse.Namespace:
    args, _ = build_parser().parse_known_args(["serve", *argv])
    return args


def test_serve_flags_given_override_the_settings_file_which_overrides_the_defaults(tmp_path):
    path = tmp_path / "t2l.yaml"
    path.write_text(
        "hypernet: /models/h\n"
        "cache: {max_entries: 7, max_wait_ms: 2}\n"
        "generator: {max_description_chars: 100}\n"
        "router: {library: starter, threshold: 0.4}\n"
        "preload: [Sort the words.]\n"
    )
    base = load_settings_file(path)
    settings = service_settings(parse_serve("--adapter-cache-entries", "9", "--router-top-k", "5"), "/models/h", base)
    assert settings.cache.max_entries == 9  # the flag
    assert settings.cache.max_wait_ms == 2  # the file
    assert settings.cache.max_batch_size == CacheSettings().max_batch_size  # the dataclass
    assert settings.generator.max_description_chars == 100
    assert settings.router == RouterSettings(library="starter", threshold=0.4, top_k=5)
    assert settings.preload == ("Sort the words.",)
    assert service_settings(parse_serve(), "/models/h") == ServiceSettings("/models/h")


def test_a_settings_file_without_a_hypernetwork_serves_the_embedded_default(tmp_path, default_paths):
    path = tmp_path / "t2l.yaml"
    path.write_text("cache: {max_entries: 3}\n")
    assert load_settings_file(path) == ServiceSettings(str(default_paths.hypernet), cache=CacheSettings(max_entries=3))


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("hypernet: h\ncache: {max_entires: 3}\n", "unknown key `cache.max_entires`"),
        ("hypernet: h\nadapter_cache: 3\n", "unknown key `adapter_cache`"),
        ("- hypernet\n", "must be a mapping, got list"),
        ("hypernet: h\ncache: 3\n", "`cache` must be a mapping"),
        ("hypernet: h\ncache: {max_entries: 0}\n", "`max_entries` must be positive, got 0"),
        ("hypernet: h\nrouter: {scoring: best}\n", "`router scoring` must be one of"),
        ("hypernet: [unclosed\n", "cannot read the t2l_vllm settings file"),
        ("hypernet: h\ngenerator: {pack_heads: 'false'}\n", "`generator.pack_heads` must be true or false, got 'false'"),
        ("hypernet: h\nplayground: 1\n", "`playground` must be true or false, got 1"),
    ],
)
def test_a_bad_settings_file_is_refused_naming_the_file_and_the_problem(tmp_path, text, fragment):
    path = tmp_path / "t2l.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="t2l.yaml") as err:
        load_settings_file(path)
    assert fragment in str(err.value)


def test_a_missing_settings_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the t2l_vllm settings file"):
        load_settings_file(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "verbose,options,added",
    [
        (False, [], ["--uvicorn-log-level", "warning", "--no-use-tqdm-on-load"]),
        (False, ["--uvicorn-log-level", "debug"], ["--no-use-tqdm-on-load"]),
        (False, ["--uvicorn-log-level=info", "--use-tqdm-on-load"], []),
        (True, [], []),
    ],
)
def test_quiet_vllm_options_leave_what_the_user_chose(verbose, options, added):
    assert quiet_vllm_options(verbose, options) == added


def test_every_field_of_the_settings_classes_owned_here_carries_its_help():
    for settings_class in (RouterSettings, EncoderSettings):
        for f in fields(settings_class):
            assert f.metadata.get("help"), f"{settings_class.__name__}.{f.name}"
