"""Mount-table validation: every bad table gets one clear line naming file, line, entry and field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import unifs

GOOD = """\
mounts:
  - path: /imagenet
    url: s3://datasets/imagenet
    read_only: true
    metadata_ttl: 30s
    options:
      endpoint_url: http://127.0.0.1:8333
      key: ${TEST_S3_KEY}
      secret: ${TEST_S3_SECRET}
  - path: /imagenet/extra
    url: memory://extra
store:
  timeout: 10s
  retries: 2
"""

BAD = [
    # (name, yaml, expected fragments of the single error line)
    ("yaml syntax", "mounts:\n  - path: /a\n   url: s3://b\n", ["bad.yaml:3:", "YAML syntax error"]),
    ("unknown key", "mounts:\n  - path: /a\n    url: s3://b\n    read_onyl: true\n",
     ["bad.yaml:4:", "mounts[0] (/a)", "unknown key 'read_onyl'", "did you mean 'read_only'"]),
    ("missing url", "mounts:\n  - path: /a\n", ["bad.yaml:2:", "mounts[0] (/a)", "missing required key 'url'"]),
    ("unknown scheme", "mounts:\n  - path: /a\n    url: foo://b\n",
     ["bad.yaml:3:", "mounts[0] (/a).url", "unknown scheme 'foo://'"]),
    ("fractional bytes", "mounts:\n  - path: /a\n    url: memory://b\ncache: {ram: 1.5B}\n",
     ["bad.yaml:4:", "cache.ram", "not a whole number of bytes"]),
    ("no RAM for mode ram", "mounts:\n  - path: /a\n    url: memory://b\ncache: {ram: 0}\n",
     ["cache.mode", "cache.ram is 0"]),
    ("metrics listen with a scheme", "mounts:\n  - path: /a\n    url: memory://b\nmetrics: {listen: 'http://127.0.0.1:9000'}\n",
     ["bad.yaml:4:", "metrics.listen", "no scheme or path"]),
    ("RAM tier below one block", "mounts:\n  - path: /a\n    url: memory://b\ncache: {ram: 1MiB, block_size: 4MiB}\n",
     ["bad.yaml:4:", "cache.ram", "less than two blocks", "could keep nothing"]),
    ("disk tier of one block", "mounts:\n  - path: /a\n    url: memory://b\n    cache: disk\n"
     "cache: {disk: 4MiB, block_size: 4MiB}\n", ["bad.yaml:5:", "cache.disk", "less than two blocks"]),
    ("unclosed variable", "mounts:\n  - path: /a\n    url: s3://b\n    options: {key: '${NOPE'}\n",
     ["bad.yaml:4:", "mounts[0] (/a).options.key", "not a ${VAR}"]),
    # obstore panicked on it at the first request (a Rust backtrace and a traceback)
    ("space in bucket", "mounts:\n  - path: /a\n    url: 's3://my data/x'\n",
     ["bad.yaml:3:", "mounts[0] (/a).url", "bucket name 'my data' has ' ' in it"]),
    ("relative path", "mounts:\n  - path: data\n    url: s3://b\n",
     ["bad.yaml:2:", "mounts[0] (data).path", "must be absolute"]),
    ("dotdot path", "mounts:\n  - path: /a/../etc\n    url: s3://b\n", ["mounts[0] (/a/../etc).path", "'..'"]),
    ("duplicate path", "mounts:\n  - path: /a\n    url: s3://b\n  - path: /a/\n    url: s3://c\n",
     ["bad.yaml:4:", "mounts[1] (/a/).path", "duplicate path /a"]),
    ("undefined var", "mounts:\n  - path: /a\n    url: s3://b\n    options:\n      secret: ${UNIFS_TEST_UNSET_VAR}\n",
     ["bad.yaml:5:", "mounts[0] (/a).options.secret", "UNIFS_TEST_UNSET_VAR is not set"]),
    ("no mounts key", "mount:\n  - path: /a\n    url: s3://b\n", ["unknown key 'mount'", "did you mean 'mounts'"]),
    ("empty mounts", "mounts: []\n", ["bad.yaml:1:", "at least one mount"]),
    ("bad duration", "mounts:\n  - path: /a\n    url: s3://b\n    metadata_ttl: soon\n",
     ["bad.yaml:4:", "metadata_ttl", "duration"]),
    ("bucket missing", "mounts:\n  - path: /a\n    url: s3://\n", ["mounts[0] (/a).url", "bucket"]),
    ("not a url", "mounts:\n  - path: /a\n    url: just-a-path\n", ["mounts[0] (/a).url", "scheme"]),
    ("bad bool", "mounts:\n  - path: /a\n    url: s3://b\n    read_only: maybe\n", ["read_only", "true or false"]),
    ("top level list", "- path: /a\n", ["bad.yaml:1:", "mapping"]),
    ("empty file", "", ["bad.yaml", "empty"]),
    ("bad store setting", "mounts:\n  - path: /a\n    url: s3://b\nstore:\n  retries: -1\n", ["store.retries"]),
    ("duplicate yaml key", "mounts:\n  - path: /a\n    path: /b\n    url: s3://b\n", ["duplicate key 'path'"]),
    ("options not a mapping", "mounts:\n  - path: /a\n    url: s3://b\n    options: [1, 2]\n",
     ["mounts[0] (/a).options", "mapping"]),
]


@pytest.mark.parametrize("name,text,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_tables_give_one_clear_line(tmp_path, name, text, fragments):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 1 and "Traceback" not in res.stderr
    line = next((ln for ln in lines if all(f in ln for f in fragments)), None)
    assert line is not None, f"{fragments} not in {lines}"
    assert line.startswith("unifs: error: ") and str(cfg) in line


def test_bad_table_refused_by_mount_too(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD[1][1])
    (tmp_path / "mp").mkdir()
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and "unknown key 'read_onyl'" in res.stderr and "Traceback" not in res.stderr


def test_good_table_resolves_and_redacts(tmp_path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    env = dict(os.environ, TEST_S3_KEY="AKIAEXAMPLE", TEST_S3_SECRET="very-secret-value")
    res = unifs("config", "check", "--config", str(cfg), env=env)
    assert res.returncode == 0, res.stderr
    assert "very-secret-value" not in res.stdout and "AKIAEXAMPLE" not in res.stdout
    assert "secret: '***'" in res.stdout and "metadata_ttl: 30.0" in res.stdout
    assert "/imagenet/extra" in res.stdout


def test_config_search_order(tmp_path):
    (tmp_path / "mounts.yaml").write_text("mounts:\n  - path: /cwd\n    url: memory://a\n")
    env_cfg = tmp_path / "env.yaml"
    env_cfg.write_text("mounts:\n  - path: /fromenv\n    url: memory://a\n")
    import subprocess
    import sys

    def check(env):
        return subprocess.run([sys.executable, "-m", "unifs", "config", "check"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    base = {k: v for k, v in os.environ.items() if k != "UNIFS_CONFIG"}
    assert "/fromenv" in check(dict(base, UNIFS_CONFIG=str(env_cfg))).stdout
    assert "/cwd" in check(base).stdout
    res = check(dict(base, UNIFS_CONFIG=str(tmp_path / "nope.yaml")))
    assert res.returncode == 1 and "UNIFS_CONFIG" in res.stderr


def test_shipped_example_validates():
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "mounts.yaml.example"
    env = dict(os.environ, S3_KEY="k", S3_SECRET="s", AZURE_STORAGE_CONNECTION_STRING="x")
    res = unifs("config", "check", "--config", str(example), env=env)
    assert res.returncode == 0, res.stderr


def test_typed_interpolation_and_relative_file_url(tmp_path):
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    t = parse_table("mounts:\n  - path: /a\n    url: s3://b\n    read_only: ${RO:-true}\n"
                    "    options: {anon: '${ANON:-false}', n: '${N:-5}', key: 'k${X:-1}'}\n", env={})
    assert t.mounts[0].options == {"anon": False, "n": 5, "key": "k1"} and t.mounts[0].read_only is True
    with pytest.raises(ConfigError) as e:
        parse_table("mounts:\n  - path: /a\n    url: file://relative/dir\n", "m.yaml", env={})
    assert "absolute path" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_table("mounts:\n  - path: /a\n    url: memory://x\n    client: obstore\n", "m.yaml", env={})
    assert "s3:// URLs only" in str(e.value)


def test_a_default_applies_to_an_empty_variable_and_an_unset_one_is_one_problem():
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    env = {"RO": "", "N": "", "EMPTY": ""}  # as the shell's ${VAR:-x}: empty takes the default
    t = parse_table("mounts:\n  - path: /a\n    url: memory://x${EMPTY:-dflt}\n    read_only: ${RO:-true}\n"
                    "store: {retries: '${N:-3}'}\n", env=env)
    assert t.mounts[0].url == "memory://xdflt" and t.mounts[0].read_only is True and t.store.retries == 3
    assert parse_table("mounts:\n  - path: /a\n    url: memory://x${EMPTY}\n", env=env).mounts[0].url == "memory://x"
    for field, value in (("metadata_ttl", "${NOPE}"), ("url", "s3://${NOPE}/x")):
        text = "mounts:\n  - path: /a\n    url: memory://x\n".replace("    url: memory://x\n", "") \
            + ("    url: memory://x\n" if field != "url" else "") + f"    {field}: {value}\n"
        with pytest.raises(ConfigError) as e:
            parse_table(text, "v.yaml", env={})
        assert len(e.value.problems) == 1 and "NOPE is not set" in e.value.problems[0], e.value.problems


def test_url_secrets_never_printed(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /w\n    url: http://alice:PW_SECRET_1@127.0.0.1:1/x/?sig=SIG_SECRET_2\n"
                   "    read_only: true\nstore: {retries: 0, timeout: 2s}\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 0 and "PW_SECRET_1" not in res.stdout and "SIG_SECRET_2" not in res.stdout
    (tmp_path / "mp").mkdir()
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and "mount /w" in res.stderr
    assert "PW_SECRET_1" not in res.stderr and "SIG_SECRET_2" not in res.stderr


def test_s3_and_gcs_prefixes_may_hold_question_marks_and_hashes():
    from unifs.config import parse_table

    t = parse_table("mounts:\n  - {path: /a, url: 's3://data/run#3'}\n  - {path: /b, url: 'gs://data/q?a/b'}\n")
    assert [m.url for m in t.mounts] == ["s3://data/run#3", "gs://data/q?a/b"]


def test_credentials_in_an_s3_or_gs_url_are_refused_without_being_printed(tmp_path):
    # "bucket name 'AKIA:SECRETURL@bucket' has ':' in it" printed the password
    cfg = tmp_path / "m.yaml"
    for url in ("s3://AKIA:URL_SECRET_1@bucket/x", "gs://u:URL_SECRET_1@bucket"):
        cfg.write_text(f"mounts:\n  - path: /w\n    url: '{url}'\n")
        res = unifs("config", "check", "--config", str(cfg))
        assert res.returncode == 1 and "credentials in it" in res.stderr, res.stderr
        assert "URL_SECRET_1" not in res.stdout + res.stderr


def test_numbers_yaml_would_read_into_credentials_stay_as_written():
    # YAML 1.1 reads 0x1F as 31, 0777 as 511, 1e3 as 1000.0 and 12:30:00 as 45000
    from unifs.config import parse_table

    t = parse_table("mounts:\n  - path: /a\n    url: s3://b\n    options: {key: 0x1F, secret: 0777, "
                    "token: 1e3, password: 1_000, sas_token: 12:30:00, retries: 0x10}\n")
    assert t.mounts[0].options == {"key": "0x1F", "secret": "0777", "token": "1e3", "password": "1_000",
                                   "sas_token": "12:30:00", "retries": 16}


def test_config_check_shows_client_for_s3_mounts_only(tmp_path):
    import yaml

    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /g\n    url: gs://bucket\n  - path: /s\n    url: s3://bucket\n")
    res = unifs("config", "check", "--config", str(cfg))
    shown = yaml.safe_load(res.stdout.split("\n", 1)[1])["mounts"]
    assert "client" not in shown[0] and shown[1]["client"] == "auto", shown


def test_yaml_merge_keys_override_and_x_keys_hold_anchors():
    # a written key next to `<<: *base` was "duplicate key"; an anchor had nowhere to live
    from unifs.config import parse_table

    t = parse_table("x-base: &b\n  url: memory://x\n  read_only: true\nmounts:\n  - <<: *b\n    path: /a\n"
                    "  - {<<: *b, path: /b, read_only: false}\n")
    assert [(m.path, m.url, m.read_only) for m in t.mounts] == [("/a", "memory://x", True),
                                                                ("/b", "memory://x", False)]
    with pytest.raises(Exception, match="duplicate key 'path'"):
        parse_table("mounts:\n  - path: /a\n    path: /b\n    url: memory://x\n")


def test_docs_example_with_anchors_validates():
    import re

    from unifs.config import parse_table

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "config.md")).read()
    example = re.search(r"```yaml\n(x-s3:.*?)```", text, re.S).group(1)
    t = parse_table(example, env={"S3_KEY": "k", "S3_SECRET": "s"})
    assert [m.path for m in t.mounts] == ["/train", "/ckpt"] and t.mounts[1].options["key"] == "k"


def test_a_misspelled_s3_option_is_named_with_its_line(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /d\n    url: s3://bucket/x\n    options:\n      key: k\n      other: 1\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1 and res.stderr.strip() == \
        f"unifs: error: {cfg}:6: mounts[0] (/d): options.other is not an option of s3fs", res.stderr


def test_config_check_refuses_misspelled_options_and_never_shows_their_values(tmp_path):
    # `secert:` passed `unifs config check`, which printed its value; the mount refused it later
    from unifs.config import redact

    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /d\n    url: s3://bucket/x\n"
                   "    options: {key: k, secert: SECRET_VALUE_1, endpoint_url: 'http://127.0.0.1:9'}\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1 and "options.secert is not an option of s3fs" in res.stderr, res.stderr
    assert "did you mean secret" in res.stderr and "SECRET_VALUE_1" not in res.stdout + res.stderr
    cfg.write_text("mounts:\n  - path: /m\n    url: memory://m\n    options: {secert: SECRET_VALUE_2}\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1 and "options.secert is not an option" in res.stderr, res.stderr
    assert "SECRET_VALUE_2" not in res.stdout + res.stderr
    # a profile and the s3fs options that pass on to botocore's session are options
    cfg.write_text("mounts:\n  - path: /d\n    url: s3://bucket/x\n    options: {profile: p, key: k}\n")
    assert unifs("config", "check", "--config", str(cfg)).returncode == 0
    shown = redact({"secert": "v1", "pasword": "v2", "acess_key": "v3", "requester_pays": True, "region_name": "r"})
    assert shown == {"secert": "***", "pasword": "***", "acess_key": "***", "requester_pays": True,
                     "region_name": "r"}


def test_interpolated_secrets_stay_strings_and_numbers_stay_canonical():
    from unifs.config import parse_table

    env = {"S": "0777123", "K": "007", "N": "8", "A": "false", "T": "12:34:56"}
    t = parse_table("mounts:\n  - path: /a\n    url: s3://b\n    options:\n      secret: ${S}\n"
                    "      key: \"${S}\"\n      token: '${N}'\n      anon: ${A}\n      n: ${N}\n"
                    "      k: ${K}\n      t: ${T}\n", env=env)
    assert t.mounts[0].options == {"secret": "0777123", "key": "0777123", "token": "8", "anon": False,
                                   "n": 8, "k": "007", "t": "12:34:56"}


MORE_BAD = [
    ("empty bucket", "mounts:\n  - path: /a\n    url: s3:///ds\n", ["mounts[0] (/a).url", "bucket"]),
    ("endpoint without scheme", "mounts:\n  - path: /a\n    url: s3://b\n    options: {endpoint_url: '127.0.0.1:9000'}\n",
     ["mounts[0] (/a)", "options.endpoint_url", "http://"]),
    ("endpoint not a url", "mounts:\n  - path: /a\n    url: gs://b\n    options: {endpoint_url: not a url}\n",
     ["options.endpoint_url"]),
    ("infinite ttl", "mounts:\n  - path: /a\n    url: s3://b\n    metadata_ttl: .inf\n", ["metadata_ttl", "finite"]),
    ("nan timeout", "mounts:\n  - path: /a\n    url: s3://b\nstore: {timeout: .nan}\n", ["store.timeout", "finite"]),
    ("list as key", "{[1, 2]: 3, mounts: [{path: /a, url: 's3://b'}]}\n", ["bad.yaml:1:", "plain name"]),
    ("newline in path", "mounts:\n  - path: \"/a\\nb\"\n    url: s3://b\n", ["path", "control characters"]),
    ("bool retries", "mounts:\n  - path: /a\n    url: s3://b\nstore: {retries: true}\n", ["store.retries"]),
    ("huge timeout", "mounts:\n  - path: /a\n    url: s3://b\nstore: {timeout: 1.0e+20}\n", ["store.timeout", "at most 24h"]),
    ("odd kernel read-ahead", "mounts:\n  - path: /a\n    url: s3://b\nread: {kernel_read_ahead: 1000}\n",
     ["read.kernel_read_ahead", "multiple of 4KiB"]),
    ("huge kernel read-ahead", "mounts:\n  - path: /a\n    url: s3://b\nread: {kernel_read_ahead: 1GiB}\n",
     ["read.kernel_read_ahead", "at most 256MiB"]),
    ("dot-dot in a prefix", "mounts:\n  - path: /a\n    url: s3://data/../data\n", ["bad.yaml:3:", "url", "'..'"]),
    ("empty part in a prefix", "mounts:\n  - path: /a\n    url: gs://data//x\n", ["bad.yaml:3:", "url", "empty"]),
    ("query in an azure url", "mounts:\n  - path: /a\n    url: az://data/dir?x=1\n", ["bad.yaml:3:", "url", "query"]),
    ("fragment in a url", "mounts:\n  - path: /a\n    url: abfs://c/dir#f\n", ["bad.yaml:3:", "url", "fragment"]),
    ("empty gcs token", "mounts:\n  - path: /a\n    url: gs://b\n    options: {token: ''}\n",
     ["mounts[0] (/a)", "options.token is empty"]),
]


@pytest.mark.parametrize("name,text,fragments", MORE_BAD, ids=[b[0] for b in MORE_BAD])
def test_more_bad_tables_give_one_clear_line(tmp_path, name, text, fragments):
    test_bad_tables_give_one_clear_line(tmp_path, name, text, fragments)


def test_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = "\n".join(levels) + "\nmounts:\n  - path: /a\n    url: s3://b\n    options: {x: *a8}\n"
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(text)
    res = unifs("config", "check", "--config", str(cfg), timeout=30)
    assert res.returncode == 1 and "aliases" in res.stderr and "Traceback" not in res.stderr


def test_missing_backend_package_is_named_at_check_time(monkeypatch):
    import importlib.util

    from unifs.config import missing_package_hint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert "unifs[hdfs]" in missing_package_hint("hdfs")


def test_missing_third_party_backend_is_named(monkeypatch):
    import importlib.util

    from unifs.config import missing_package_hint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    hint = missing_package_hint("gs")
    assert "gcsfs" in hint and "unifs[gcs]" in hint
    assert missing_package_hint("s3") is None


def test_checking_an_s3_table_does_not_import_s3fs():
    # the daemon parses the table too: importing s3fs there costs ~20 MiB of RSS for nothing
    # when the mount reads through obstore
    code = ("import sys; from unifs.config import parse_table; "
            "parse_table('mounts:\\n  - path: /a\\n    url: s3://b\\n', env={}); "
            "print(sorted(m for m in ('s3fs', 'botocore', 'aiobotocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_secrets_are_scrubbed_from_any_message():
    from urllib.parse import quote

    from unifs.config import parse_table, redact_url, scrub

    parse_table("mounts:\n  - path: /a\n    url: gs://b\n    options:\n      token: ya29.SCRUB_ME_TOKEN\n"
                "  - path: /h\n    url: http://h/x/\n    read_only: true\n    options:\n      session_cookie: SCRUB_ME_COOKIE\n", env={})
    text = (f"HTTPSConnectionPool: /tokeninfo?access_token=ya29.SCRUB_ME_TOKEN failed; "
            f"{quote('ya29.SCRUB_ME_TOKEN', safe='')}; cookie SCRUB_ME_COOKIE")
    out = scrub(text)
    assert "SCRUB_ME" not in out and "***" in out
    assert "LEAK" not in redact_url("http://h/x?access_token=LEAK1&api_key=LEAK2&private_key=LEAK3")


def test_option_types_are_checked_and_quoted_booleans_mean_what_they_say(tmp_path):
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    t = parse_table("mounts:\n  - path: /a\n    url: s3://bkt\n    options: {anon: 'false', key: 12345, "
                    "secret: s, client_kwargs: {region_name: 5, verify: 'false'}}\n", env={})
    assert t.mounts[0].options == {"anon": False, "key": "12345", "secret": "s",
                                   "client_kwargs": {"region_name": "5", "verify": False}}
    for bad, words in (("anon: maybe", "(/a).options: anon must be true or false"),
                       ("secret: [x]", "(/a).options: secret must be text, got a list"),
                       ("key: {a: 1}", "(/a).options: key must be text, got a mapping"),
                       ("client_kwargs: {region_name: [1]}", "(/a).options: client_kwargs.region_name must be text")):
        with pytest.raises(ConfigError) as e:
            parse_table(f"mounts:\n  - path: /a\n    url: s3://bkt\n    options: {{{bad}}}\n", "m.yaml", env={})
        assert len(e.value.problems) == 1 and words in e.value.problems[0], e.value.problems


def test_a_gcs_key_file_that_is_missing_or_not_json_is_named(tmp_path):
    from unifs.config import parse_table, scrub
    from unifs.errors import ConfigError

    def table(token):
        return f"mounts:\n  - path: /g\n    url: gs://bkt\n    options: {{token: '{token}'}}\n"
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\x00")
    good = tmp_path / "sa.json"
    good.write_text('{"type": "service_account"}')
    for token, words in ((tmp_path / "nope.json", "does not exist"), (tmp_path / "bin.json", "not a JSON")):
        with pytest.raises(ConfigError) as e:
            parse_table(table(token), "m.yaml", env={})
        assert len(e.value.problems) == 1 and "options.token: " in e.value.problems[0] \
            and words in e.value.problems[0], e.value.problems
    parse_table(table(good), env={})
    parse_table(table("cloud"), env={})
    assert scrub("Invalid gcloud credentials") == "Invalid gcloud credentials"  # a mode, no secret


@pytest.mark.parametrize("url,options,words", [
    ("gs://b", {"tokn": "anon"}, "options.tokn is not an option of gcsfs (did you mean token?)"),
    ("gs://b", {"bogus": 1}, "options.bogus is not an option of gcsfs"),
    ("abfs://c", {"connection_strin": "x"}, "options.connection_strin is not an option of adlfs "
                                            "(did you mean connection_string?)"),
])
def test_a_misspelled_gcs_or_azure_option_is_refused(url, options, words):
    # gcsfs and adlfs take **kwargs: these mounted and were ignored (tokn: anon -> default credentials)
    import yaml

    from unifs.config import parse_table
    from unifs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_table(yaml.safe_dump({"mounts": [{"path": "/a", "url": url, "options": options}]}), "m.yaml", env={})
    assert len(e.value.problems) == 1 and words in e.value.problems[0], e.value.problems


def test_gcs_and_azure_options_that_are_real_pass():
    import yaml

    from unifs.config import parse_table

    parse_table(yaml.safe_dump({"mounts": [
        {"path": "/g", "url": "gs://b", "options": {"token": "anon", "project": "p", "requests_timeout": 5,
                                                     "endpoint_url": "http://127.0.0.1:4443",
                                                     "use_listings_cache": False, "version_aware": True}},
        # adlfs hands keywords it does not know to azure-identity's DefaultAzureCredential
        {"path": "/a", "url": "abfs://c", "options": {"account_name": "x", "exclude_environment_credential": True,
                                                       "managed_identity_client_id": "id", "anon": False}},
    ]}), env={})


def test_an_option_the_client_does_not_take_is_named_with_a_suggestion():
    from unifs.config import unknown_option_hint

    assert unknown_option_hint("s3", "endpoint_ur1") == \
        "options.endpoint_ur1 is not an option of s3fs (did you mean endpoint_url?)"


def test_a_secret_quoted_by_a_failing_check_is_not_printed(tmp_path):
    # a GCS token with a '/' was taken for a key file name, and the error quoted it in clear
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /gs\n    url: gs://b\n    options: {token: 'eyJhb/TOKEN_SECRET_9+x/y'}\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1 and "options.token" in res.stderr, res.stderr
    assert "TOKEN_SECRET_9" not in res.stdout + res.stderr
    # a key file's name is no secret: the error names it
    cfg.write_text("mounts:\n  - path: /gs\n    url: gs://b\n    options: {token: /etc/nope/sa-key.json}\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1 and "/etc/nope/sa-key.json does not exist" in res.stderr, res.stderr


@pytest.mark.parametrize("name", ["endpoint_url", "account_url"])
def test_an_azure_endpoint_option_adlfs_would_ignore_is_refused(name):
    # adlfs hands unknown names to azure-identity: the mount reached the public endpoint
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_table(f"mounts:\n  - path: /l\n    url: abfs://c/p\n    options: {{account_name: a, "
                    f"account_key: k, {name}: 'http://127.0.0.1:1/a'}}\n", env={})
    assert len(e.value.problems) == 1 and f"options.{name}: adlfs takes no such option" in e.value.problems[0]
    assert "connection_string" in e.value.problems[0]


@pytest.mark.parametrize("value,env,name", [("$S3_KEY", {}, "S3_KEY"), ("file://$DATA/x", {"DATA": "/d"}, "DATA"),
                                            ("${PFX:-$DATA/runs}", {"DATA": "/d"}, "DATA"),
                                            ("${PFX:-$S3_KEY}", {}, "S3_KEY")])
def test_a_shell_style_reference_is_refused(value, env, name):
    # `key: $S3_KEY` went to the store as that text: "config check" said OK, the mount 403
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_table(f"mounts:\n  - path: /a\n    url: s3://b\n    options: {{key: '{value}', secret: s}}\n", env=env)
    assert len(e.value.problems) == 1 and f"write ${{{name}}}" in e.value.problems[0], e.value.problems
    # a $ in a password stays text, and $$ is a $
    t = parse_table("mounts:\n  - path: /a\n    url: s3://b\n    options: {key: 'pa$word', secret: '$$S3_KEY'}\n",
                    env={})
    assert t.mounts[0].options == {"key": "pa$word", "secret": "$S3_KEY"}
    t = parse_table("mounts:\n  - path: /a\n    url: s3://b\n    options: {key: '${A:-x}$B', secret: s}\n", env={})
    assert t.mounts[0].options["key"] == "x$B"  # not the whole value, not a set variable: text


def test_a_reference_inside_a_default_is_refused_not_kept_as_text():
    # `${X:-${PART}}` became the literal text "${PART}"
    from unifs.config import parse_table
    from unifs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_table("mounts:\n  - path: /a\n    url: 's3://b/${X:-${PART}}'\n", env={"PART": "p"})
    assert len(e.value.problems) == 1 and "'${' that is not a ${VAR}" in e.value.problems[0], e.value.problems
    t = parse_table("mounts:\n  - path: /a\n    url: 's3://b/${X:-a-b}/${Y:-}c'\n", env={})
    assert t.mounts[0].url == "s3://b/a-b/c"


def test_an_unknown_option_is_not_suggested_as_itself():
    from unifs.config import unknown_option_hint

    assert "did you mean" not in unknown_option_hint("memory", "key")
    assert "did you mean endpoint_url" in unknown_option_hint("s3", "endpoint_ur")
