"""The official registry, and strict validation of the user registry file."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisperctl.errors import RegistryError, UnknownModelError
from whisperctl.models.dims import DIMS_FIELDS, ModelDimensions, count_parameters
from whisperctl.models.registry import Registry, decode_alignment_heads, default_registry_path, load_registry

from .helpers import Cli, write_registry

OFFICIAL_NAMES = [
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo",
]  # fmt: skip
DIGEST = "ab" * 32


def test_official_names_and_aliases() -> None:
    reg = Registry()
    assert [s.name for s in reg] == OFFICIAL_NAMES
    assert len(reg.names) == 14
    assert reg.get("large") is reg.get("large-v3")
    assert reg.get("turbo") is reg.get("large-v3-turbo")
    assert reg.get("large-v3").aliases == ("large",)
    assert [s.name for s in reg.resolve(["large", "large-v3", "tiny", "turbo"])] == [
        "large-v3",
        "tiny",
        "large-v3-turbo",
    ]


def test_official_specs_are_consistent() -> None:
    for spec in Registry():
        assert spec.filename == f"{spec.name}.pt"
        assert spec.url.endswith(f"/{spec.sha256}/{spec.filename}")
        assert spec.url.startswith("https://")
        assert len(spec.sha256) == 64
        assert spec.english_only == spec.name.endswith(".en")
        assert spec.dims is not None
        assert spec.alignment_heads
        for layer, head in spec.alignment_heads:
            assert 0 <= layer < spec.dims.n_text_layer
            assert 0 <= head < spec.dims.n_text_head
    # The one size that is not published is not invented.
    assert Registry().get("turbo").size_bytes is None
    assert Registry().get("tiny").size_bytes == 75572083


def test_parameter_counts() -> None:
    tiny = Registry().get("tiny").parameters
    assert tiny is not None
    assert tiny.total == 37_184_640
    assert (tiny.encoder, tiny.decoder) == (7_632_384, 29_552_256)
    # English-only models have one token less in the vocabulary: exactly one embedding row.
    tiny_en = Registry().get("tiny.en").parameters
    assert tiny_en is not None
    assert tiny.total - tiny_en.total == 384


def test_official_data_matches_openai_whisper() -> None:
    whisper = pytest.importorskip("whisper")
    import base64
    import gzip

    import numpy as np

    reg = Registry()
    assert set(whisper._MODELS) == set(reg.names)
    for name, url in whisper._MODELS.items():
        spec = reg.get(name)
        assert spec.url == url
        blob = whisper._ALIGNMENT_HEADS[name]
        assert spec.dims is not None
        mask = np.frombuffer(gzip.decompress(base64.b85decode(blob)), dtype=bool)
        mask = mask.reshape(spec.dims.n_text_layer, spec.dims.n_text_head)
        assert spec.alignment_heads == tuple((int(a), int(b)) for a, b in zip(*mask.nonzero(), strict=True))


def test_decode_alignment_heads_rejects_bad_blobs() -> None:
    with pytest.raises(ValueError, match="base85"):
        decode_alignment_heads("not a blob!", 4, 6)
    with pytest.raises(ValueError, match="4x5"):
        decode_alignment_heads("ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO", 4, 5)


def test_dims_from_mapping_validates() -> None:
    dims = {f: 1 for f in DIMS_FIELDS}
    assert ModelDimensions.from_mapping(dims).n_mels == 1
    with pytest.raises(ValueError, match="missing n_mels"):
        ModelDimensions.from_mapping({k: v for k, v in dims.items() if k != "n_mels"})
    with pytest.raises(ValueError, match="unexpected extra"):
        ModelDimensions.from_mapping({**dims, "extra": 1})
    with pytest.raises(ValueError, match="not positive integers: n_vocab=-1, n_text_ctx=True"):
        ModelDimensions.from_mapping({**dims, "n_vocab": -1, "n_text_ctx": True})
    assert count_parameters(ModelDimensions.from_mapping(dims)).total > 0


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownModelError) as info:
        Registry().get("tiny-en")
    assert info.value.suggestions[0] == "tiny.en"
    assert "did you mean 'tiny.en'" in str(info.value)
    assert Registry().suggest("zzzzzz") == []


def test_user_registry_entry(tmp_path: Path) -> None:
    path = write_registry(
        tmp_path / "models.toml",
        f"""
[models.my-ft]
url = "https://models.example.com/my-ft.pt"
sha256 = "{DIGEST.upper()}"
size = 1234
alignment_heads = [[3, 1], [2, 0], [3, 1]]
""",
    )
    reg = load_registry(path)
    spec = reg.get("my-ft")
    assert spec.source == "registry"
    assert spec.sha256 == DIGEST  # normalised to lower case
    assert spec.filename == "my-ft.pt"
    assert spec.size_bytes == 1234
    assert spec.alignment_heads == ((2, 0), (3, 1))
    assert spec.parameters is None
    assert [s.name for s in reg][-1] == "my-ft"


def test_registry_path_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    entry = '[models.{}]\nurl = "http://127.0.0.1/x.pt"\nsha256 = "' + DIGEST + '"\n'
    default = default_registry_path()
    assert default == isolated_env / ".config" / "whisperctl" / "models.toml"
    default.parent.mkdir(parents=True)
    default.write_text(entry.format("from-default"))
    assert "from-default" in load_registry()
    env_file = write_registry(tmp_path / "env.toml", entry.format("from-env"))
    monkeypatch.setenv("WHISPERCTL_REGISTRY", str(env_file))
    assert "from-env" in load_registry() and "from-default" not in load_registry()
    flag_file = write_registry(tmp_path / "flag.toml", entry.format("from-flag"))
    assert "from-flag" in load_registry(flag_file)
    # XDG_CONFIG_HOME moves the default file, as platformdirs says.
    monkeypatch.delenv("WHISPERCTL_REGISTRY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_registry_path() == tmp_path / "xdg" / "whisperctl" / "models.toml"
    assert list(load_registry()) == list(Registry())


def test_missing_default_registry_is_fine_but_explicit_is_not(tmp_path: Path) -> None:
    assert len(load_registry()) == 12
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry(tmp_path / "nope.toml")


GOOD = f'url = "https://example.com/m.pt"\nsha256 = "{DIGEST}"\n'

# (file text, what the one-line message must contain: the entry and the field)
MALFORMED = {
    "toml-syntax": ("[models.x\nurl = 1", "not valid TOML"),
    "top-level-key": ('url = "x"', "unknown top-level key 'url'"),
    "models-not-table": ('models = "x"', "'models' must be a table"),
    "entry-not-table": ("[models]\nx = 3", "[models.'x']: must be a table"),
    "name-dotdot": (f'[models."a..b"]\n{GOOD}', "[models.'a..b']: invalid model name"),
    "name-slash": (f'[models."../x"]\n{GOOD}', "[models.'../x']: invalid model name"),
    "name-absolute": (f'[models."/etc/passwd"]\n{GOOD}', "invalid model name"),
    "name-nul": (f'[models."a\\u0000b"]\n{GOOD}', "invalid model name"),
    "name-newline": (f'[models."a\\nb"]\n{GOOD}', "invalid model name"),
    "name-too-long": (f"[models.{'a' * 65}]\n{GOOD}", "invalid model name"),
    "name-leading-dot": (f'[models.".hidden"]\n{GOOD}', "invalid model name"),
    "shadows-official": (f"[models.tiny]\n{GOOD}", "[models.'tiny']: shadows an official model ('tiny')"),
    "shadows-alias": (f"[models.turbo]\n{GOOD}", "shadows an official model ('turbo')"),
    "shadows-case": (f"[models.Tiny]\n{GOOD}", "shadows an official model ('tiny')"),
    "shadows-entry": (f"[models.a]\n{GOOD}[models.A]\n{GOOD}", "[models.'A']: shadows another entry ('a')"),
    "unknown-field": (f"[models.x]\n{GOOD}colour = 1", "[models.'x'] colour: unknown field"),
    "missing-url": (f'[models.x]\nsha256 = "{DIGEST}"', "[models.'x'] url: missing"),
    "url-not-string": (f"[models.x]\nurl = 3\nsha256 = '{DIGEST}'", "[models.'x'] url: must be a string"),
    "url-file": (f"[models.x]\nurl = 'file:///etc/passwd'\nsha256 = '{DIGEST}'", "is not an http(s) URL"),
    "url-ftp": (f"[models.x]\nurl = 'ftp://h/m.pt'\nsha256 = '{DIGEST}'", "[models.'x'] url: 'ftp://h/m.pt'"),
    "url-no-host": (f"[models.x]\nurl = 'https:///m.pt'\nsha256 = '{DIGEST}'", "is not an http(s) URL"),
    "missing-sha": ("[models.x]\nurl = 'https://h/m.pt'", "[models.'x'] sha256: missing"),
    "sha-short": (
        "[models.x]\nurl = 'https://h/m.pt'\nsha256 = 'abc'",
        "sha256: 'abc' is not 64 hexadecimal",
    ),
    "sha-long": (f"[models.x]\nurl = 'https://h/m.pt'\nsha256 = '{DIGEST}0'", "is not 64 hexadecimal"),
    "sha-not-hex": (f"[models.x]\nurl = 'https://h/m.pt'\nsha256 = '{'g' * 64}'", "is not 64 hexadecimal"),
    "size-negative": (f"[models.x]\n{GOOD}size = -1", "[models.'x'] size: -1 is not a positive integer"),
    "size-string": (f"[models.x]\n{GOOD}size = '10'", "size: '10' is not a positive integer"),
    "heads-not-list": (f"[models.x]\n{GOOD}alignment_heads = 3", "alignment_heads: must be a non-empty list"),
    "heads-bad-pair": (f"[models.x]\n{GOOD}alignment_heads = [[1]]", "alignment_heads: [1] is not a [layer"),
    "heads-negative": (
        f"[models.x]\n{GOOD}alignment_heads = [[1, -2]]",
        "[1, -2] is not a [layer, head] pair",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_registry_is_one_line_exit_2(case: str, tmp_path: Path, cli: Cli) -> None:
    text, expected = MALFORMED[case]
    path = write_registry(tmp_path / "models.toml", text)
    result = cli("--registry", str(path), "list")
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith(f"error: {path}: "), message
    assert expected in message, message


def test_registry_not_utf8(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes(b"[models.x]\nurl = '\xff'\n")
    result = cli("--registry", str(path), "list")
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr


def test_registry_unreadable_is_exit_2(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "models.toml"
    path.mkdir()  # a directory cannot be read as a file, even by root
    result = cli("--registry", str(path), "list")
    assert result.exit_code == 2
    assert "cannot read the registry file" in result.stderr


def test_registry_entry_in_cli(tmp_path: Path, cli: Cli, cache_dir: Path) -> None:
    path = write_registry(tmp_path / "models.toml", f"[models.my-ft]\n{GOOD}")
    result = cli("--registry", str(path), "--cache-dir", str(cache_dir), "info", "my-ft", "--json")
    assert result.exit_code == 0, result.stderr
    import json

    data = json.loads(result.stdout)
    assert data["source"] == "registry"
    assert data["dims"] is None and data["parameters"] is None and data["alignment_heads"] is None
    assert data["path"] == str(cache_dir / "my-ft.pt")
