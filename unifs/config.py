"""The mount table: YAML loading, ${VAR} interpolation, schema and validation.

Every problem becomes one line naming the file, the line, the entry and the
field, e.g. ``mounts.yaml:7: mounts[1] (/ckpt): unknown key 'read_onyl'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unifs.errors import ConfigError, UserError
from unifs.paths import under
from unifs.units import format_size, parse_duration, parse_size

SEARCH_ORDER_HELP = "$UNIFS_CONFIG, ./mounts.yaml, ~/.config/unifs/mounts.yaml, /etc/unifs/mounts.yaml"

# Option names whose values are credentials; matched as substrings, case-insensitively.
_SECRET_WORDS = ("secret", "password", "passwd", "pass", "pw", "token", "key", "credential", "sas",
                 "connection_string", "signature", "auth", "sig", "cookie", "session")
REDACTED = "***"


# ---------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------

class _LineDict(dict):
    """A mapping that remembers the line of each key (1-based) and its own."""

    line: int = 0
    key_lines: dict


class _LineList(list):
    line: int = 0
    item_lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    # keys written in this mapping, as opposed to those a merge (`<<: *base`) brings in: a
    # written key overrides a merged one (YAML's merge rule); written twice, it is a mistake
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    result = _LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    written = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (list, dict)):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain name, not a list or mapping", key_node.start_mark)
        mine = id(key_node) in own
        if key in result and (not mine or key in written):
            if not mine:
                continue  # merged twice: the first merge wins
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        if mine:
            written.add(key)
        value = loader.construct_object(value_node, deep=True)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                isinstance(value_node, yaml.ScalarNode) and (key in _TEXT_OPTIONS or is_secret_key(str(key))):
            # YAML 1.1 reads 0x1F, 0777, 1_000, 1e3 and 12:30:00 as numbers: a credential is
            # the text as written, not str(31)
            value = value_node.value
        result[key] = value
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader, node):
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)

MAX_VALUES = 100_000  # a mount table is small; more values means aliases multiplying (a YAML bomb)


def _expanded_size(node, memo: dict) -> int:
    """How many values the tree has once aliases are expanded (shared nodes counted each time)."""
    if not isinstance(node, (dict, list)):
        return 1
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a cycle counts as nothing more
        items = node.values() if isinstance(node, dict) else node
        memo[key] = 1 + sum(_expanded_size(v, memo) for v in items)
    return memo[key]


def _line_of(raw: Any, loc: tuple) -> Optional[int]:
    """Best line number for a pydantic error location inside the raw YAML tree."""
    line = getattr(raw, "line", None)
    node = raw
    for part in loc:
        if isinstance(part, _AtKey):
            part = str(part)
        if isinstance(node, _LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, _LineList) and isinstance(part, int) and part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


# ---------------------------------------------------------------------------
# ${VAR} interpolation
# ---------------------------------------------------------------------------

# a default holds no "${": `${X:-${Y}}` is not nested (it read as default "${Y" plus a "}")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:(?!\$\{)[^}])*))?\}|\$\$")
_BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class _Interpolation:
    def __init__(self, env):
        self.env = env
        self.problems: list[tuple[tuple, str]] = []

    def apply(self, node, loc=()):
        if isinstance(node, _LineDict):
            for key in list(node):
                node[key] = self.apply(node[key], loc + (key,))
            return node
        if isinstance(node, _LineList):
            for i, item in enumerate(node):
                node[i] = self.apply(item, loc + (i,))
            return node
        if isinstance(node, str) and "$" in node:
            if "${" in _VAR.sub("", node):  # `${NOPE` went through as text
                self.problems.append((loc, "has a '${' that is not a ${VAR} or ${VAR:-default} reference "
                                           "(unclosed brace? write $$ for a literal $)"))
                return node
            bare = self._bare_reference(node)
            if bare:
                self.problems.append((loc, f"has a shell-style reference to {bare}, which unifs takes as text: "
                                           f"write ${{{bare}}} for the environment variable (or $$ for a $)"))
                return node
            whole = _VAR.fullmatch(node.strip())
            value = _VAR.sub(lambda m: self._value(m, loc), node)
            # credentials stay strings whatever they look like (a secret 0777123 is no number)
            if whole and whole.group(0) != "$$" and not (loc and is_secret_key(str(loc[-1]))):
                return _typed(value)
            return value
        return node

    def _bare_reference(self, node: str) -> Optional[str]:
        """A shell-style $NAME, which unifs does not expand: the whole value (`key: $S3_KEY` went
        to the store as that text, refused as a wrong key), or a name set in the environment
        (`file://$HOME/data`). Other `$` stay text (a password `pa$word`)."""
        # outside the references, and in their defaults (the shell expands `${X:-$HOME/runs}`)
        parts = [(_VAR.sub("", node), node)] + [(d, d) for d in (m.group(2) for m in _VAR.finditer(node)) if d]
        for text, whole in parts:
            for m in _BARE.finditer(text):
                if m.group(0) == whole.strip() or m.group(1) in self.env:
                    return m.group(1)
        return None

    def _value(self, m, loc):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = self.env.get(name)
        if value is not None and (value != "" or default is None):
            return value
        if default is not None:  # as in the shell: unset or empty takes the default
            return default
        self.problems.append((loc, f"environment variable {name} is not set"))
        return ""


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_BOOL = {"true": True, "false": False}


def _typed(value: str):
    """A value that is just ${VAR}: true/false become booleans and plain decimal
    numbers become numbers (anon: ${ANON:-false}, retries: ${N}); anything else stays the
    string it is: a secret such as 007 or 0777123 must not turn into 7 or an octal number."""
    v = value.strip()
    if v.lower() in _BOOL:
        return _BOOL[v.lower()]
    if _INT.fullmatch(v):
        return int(v)
    if _FLOAT.fullmatch(v):
        return float(v)
    return value


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------

def _size(v):
    return parse_size(v)


def _duration(v):
    return parse_duration(v)


def _positive_duration(v) -> float:
    d = _duration(v)
    if d <= 0:
        raise ValueError("must be greater than 0")
    return d


def _absolute_dir(v) -> str:
    v = os.path.expanduser(str(v))
    if not os.path.isabs(v):
        raise ValueError(f"must be an absolute path, got {v!r}")
    return v


class MountEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="absolute path inside the mount point")
    url: str = Field(description="fsspec URL of the store root, e.g. s3://bucket/prefix")
    read_only: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    metadata_ttl: float = 60.0
    client: str = "auto"
    write_back: float = 5.0  # upload data flushed to a file still open at most this often (0: only at close)
    cache: Optional[str] = None  # none|ram|disk|tiered; None: the cache section's mode
    prefetch: bool = True  # fetch the next small files of a directory read in listing order

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str) -> str:
        if not isinstance(v, str) or not v:
            raise ValueError("must be a non-empty absolute path like /imagenet")
        if not v.startswith("/"):
            raise ValueError(f"must be absolute (start with '/'), got {v!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in v.replace("\0", "")):
            raise ValueError(f"must not contain control characters (newline, tab ...), got {v!r}")
        parts = [p for p in v.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"must not contain '.' or '..' components, got {v!r}")
        if "\0" in v:
            raise ValueError("must not contain NUL characters")
        return "/" + "/".join(parts)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return check_url(v)

    @model_validator(mode="after")
    def _scheme_rules(self):
        scheme = self.url.split("://", 1)[0].lower()
        if self.client == "obstore" and scheme not in ("s3", "s3a"):
            raise ValueError("client: obstore applies to s3:// URLs only")
        if scheme == "file" and not self.url.split("://", 1)[1].startswith("/"):
            raise ValueError(f"file:// URLs need an absolute path (file:///abs/dir), got {self.url!r}")
        if scheme in ("http", "https") and not self.read_only:
            raise ValueError("http(s):// mounts are read-only: set read_only: true")
        check_endpoints(self.options)
        if scheme in ("gs", "gcs"):
            check_gcs_token(self.options)
        check_option_names(scheme, self.options)
        return self

    @field_validator("metadata_ttl", "write_back", mode="before")
    @classmethod
    def _ttl(cls, v):
        return _duration(v)

    @field_validator("options")
    @classmethod
    def _options(cls, v):
        return normalise_options(v)

    @field_validator("cache")
    @classmethod
    def _cache_mode(cls, v):
        if v is not None and v not in CACHE_MODES:
            raise ValueError(f"must be one of {', '.join(CACHE_MODES)}; got {v!r}")
        return v

    @field_validator("client")
    @classmethod
    def _client(cls, v):
        if v not in ("auto", "fsspec", "obstore"):
            raise ValueError(f"must be one of auto, fsspec, obstore; got {v!r}")
        return v


MAX_STORE_TIMEOUT = 24 * 3600.0


class StoreSettings(BaseModel):
    """How unifs talks to stores: every call has a timeout and bounded retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = 30.0
    connect_timeout: float = 5.0
    retries: int = Field(default=3, ge=0, le=20)

    @field_validator("retries", mode="before")
    @classmethod
    def _count(cls, v):
        if isinstance(v, bool):
            raise ValueError(f"expected a number of retries like 3, got {v!r}")
        return v

    @field_validator("timeout", "connect_timeout", mode="before")
    @classmethod
    def _d(cls, v):
        d = _positive_duration(v)
        if d > MAX_STORE_TIMEOUT:  # 1e20 passed the check and overflowed in the store client
            raise ValueError(f"must be at most {MAX_STORE_TIMEOUT // 3600:.0f}h (a store call that may take "
                             "longer is a hung call), got " + str(v))
        return d


class ReadSettings(BaseModel):
    """Sequential read-ahead of large objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_request: int = 1024 * 1024
    part_size: int = 8 * 1024 * 1024
    max_window: int = 64 * 1024 * 1024
    budget: int = 512 * 1024 * 1024
    threads: int = Field(default=16, ge=1, le=256)
    kernel_read_ahead: int = 1024 * 1024

    @field_validator("first_request", "part_size", "max_window", "budget", mode="before")
    @classmethod
    def _s(cls, v):
        s = _size(v)
        if s <= 0:
            raise ValueError("must be greater than 0")
        return s

    @field_validator("kernel_read_ahead", mode="before")
    @classmethod
    def _ra(cls, v):
        s = _size(v)
        if s < 0 or s % 4096:
            raise ValueError(f"must be a multiple of 4KiB (0: the kernel's default), got {v!r}")
        if s > 256 * 1024 * 1024:  # the kernel would take it, and read that far ahead of every reader
            raise ValueError(f"must be at most 256MiB (the default is 1MiB), got {v!r}")
        return s


CACHE_MODES = ("none", "ram", "disk", "tiered")


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/unifs"
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unifs")


def physical_memory() -> int:
    """This machine's memory in bytes, 0 if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def default_ram_cache() -> int:
    """An eighth of physical memory, at most 4 GiB."""
    return min(4 << 30, (physical_memory() or 8 << 30) // 8)


class CacheSettings(BaseModel):
    """The tiered block cache: RAM in front of a local disk directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: str = "ram"  # tiered adds the disk tier: see docs/config.md for its cost
    ram: int = Field(default_factory=default_ram_cache)
    disk: int = 20 << 30
    dir: str = Field(default_factory=default_cache_dir)
    block_size: int = 4 << 20

    @field_validator("mode")
    @classmethod
    def _mode(cls, v):
        if v not in CACHE_MODES:
            raise ValueError(f"must be one of {', '.join(CACHE_MODES)}; got {v!r}")
        return v

    @field_validator("ram", "disk", mode="before")
    @classmethod
    def _bytes(cls, v):
        s = _size(v)
        if s < 0:
            raise ValueError("must not be negative")
        return s

    @field_validator("block_size", mode="before")
    @classmethod
    def _block(cls, v):
        s = _size(v)
        if not (64 << 10) <= s <= (64 << 20):
            raise ValueError("must be between 64KiB and 64MiB")
        return s

    @field_validator("dir")
    @classmethod
    def _abs(cls, v):
        return _absolute_dir(v)


def default_staging_dir() -> str:
    """Not under a cache directory: staged files may be the only copy of a user's data."""
    if os.geteuid() == 0:
        return "/var/lib/unifs/staging"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "unifs", "staging")


class WriteSettings(BaseModel):
    """Staged writes: files are written locally, then uploaded on close/fsync."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    staging_dir: str = Field(default_factory=default_staging_dir)
    upload_threads: int = Field(default=8, ge=1, le=64)
    retry_max_interval: float = 60.0

    @field_validator("staging_dir")
    @classmethod
    def _abs(cls, v):
        return _absolute_dir(v)

    @field_validator("retry_max_interval", mode="before")
    @classmethod
    def _d(cls, v):
        return _positive_duration(v)


class MetricsSettings(BaseModel):
    """A Prometheus endpoint of the daemon (unifs/metrics.py); off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Optional[str] = None  # HOST:PORT, or PORT on 127.0.0.1

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, v):
        if v is None:
            return None
        from unifs.metrics import parse_listen

        parse_listen(v)
        return str(v).strip()


class MountTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mounts: list[MountEntry] = Field(min_length=1)
    store: StoreSettings = Field(default_factory=StoreSettings)
    read: ReadSettings = Field(default_factory=ReadSettings)
    write: WriteSettings = Field(default_factory=WriteSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)


# ---------------------------------------------------------------------------
# URL checks
# ---------------------------------------------------------------------------

_BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}


def check_url(url: str) -> str:
    import fsspec

    if not isinstance(url, str) or not url.strip():
        raise ValueError("must be a store URL like s3://bucket/prefix")
    url = url.strip()
    if "://" not in url:
        raise ValueError(f"must be a URL with a scheme like s3://bucket/prefix, got {url!r}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    known = set(fsspec.available_protocols())
    if scheme not in known:
        raise ValueError(f"unknown scheme '{scheme}://' (fsspec knows e.g. s3, gs, az, abfs, hdfs, file, memory, http)")
    bucket = rest.split("/", 1)[0]
    if scheme in _BUCKET_SCHEMES and not bucket:
        raise ValueError(f"needs a bucket or container, e.g. {scheme}://my-bucket/prefix")
    if scheme in _NAMED_BUCKETS and "@" in bucket:  # never echo it: the part before '@' is a secret
        raise ValueError("has credentials in it (user:password@); put them under options: "
                         "(key and secret for s3, token for gs)")
    if scheme in _BUCKET_SCHEMES:
        if ("?" in rest or "#" in rest) and scheme in _AZURE:
            # adlfs parses a path as a URL (S3 and GCS keys may hold both characters)
            raise ValueError(f"has {'?' if '?' in rest else '#'!r} in it, which the Azure client reads as a "
                             "URL query or fragment (put settings under options:)")
        prefix = rest.split("/", 1)[1].rstrip("/") if "/" in rest else ""
        bad_seg = next((p for p in prefix.split("/") if p in ("", ".", "..")), None) if prefix else None
        if bad_seg is not None:
            raise ValueError(f"has an empty, '.' or '..' part in its path ({bad_seg or '//'!r}); write the "
                             "prefix plainly, e.g. s3://bucket/a/b")
    if scheme in _NAMED_BUCKETS and not re.fullmatch(r"[A-Za-z0-9._-]+", bucket):
        bad = next(c for c in bucket if not re.fullmatch(r"[A-Za-z0-9._-]", c))
        raise ValueError(f"bucket name {bucket!r} has {bad!r} in it; bucket names are letters, digits, "
                         "'.', '-' and '_'")
    return url


# S3 and GCS bucket names (Azure's "container@account" URLs have more)
_NAMED_BUCKETS = {"s3", "s3a", "gs", "gcs"}


_ENDPOINT_KEYS = ("endpoint_url", "endpoint", "account_url")


_BOOL_OPTIONS = {"anon", "use_ssl", "requester_pays", "version_aware"}
_TEXT_OPTIONS = {"key", "secret", "token", "endpoint_url", "region", "region_name", "profile", "project",
                 "connection_string", "account_name", "account_key", "sas_token", "tenant_id", "client_id",
                 "client_secret"}
_TRUTH = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def normalise_options(options: dict, where: str = "") -> dict:
    """Store options with the types their clients need, or a ValueError naming the option.
    A quoted 'false' is a non-empty string, which clients take as true: `anon: 'false'` turned
    anonymous access on. A number where text is needed (a digits-only key) becomes text; a list
    or mapping there failed deep inside the client with a TypeError naming no option."""
    out = {}
    for k, v in options.items():
        name = f"{where}.{k}" if where else str(k)  # the problem's location names 'options'
        if k == "verify" and isinstance(v, str) and v.strip().lower() in _TRUTH:
            v = _TRUTH[v.strip().lower()]  # botocore's verify: a boolean, or a CA bundle's path
        elif k in _BOOL_OPTIONS and not isinstance(v, bool):
            if isinstance(v, (str, int)) and str(v).strip().lower() in _TRUTH:
                v = _TRUTH[str(v).strip().lower()]
            else:
                raise ValueError(f"{name} must be true or false, got {v!r}")
        elif k in _TEXT_OPTIONS and v is not None and not isinstance(v, str):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            elif not (k == "token" and isinstance(v, dict)):  # gcsfs: a credentials mapping
                kind = "a list" if isinstance(v, list) else "a mapping" if isinstance(v, dict) else type(v).__name__
                raise ValueError(f"{name} must be text, got {kind}")
        elif isinstance(v, dict) and k.endswith("_kwargs"):
            v = normalise_options(v, name)
        out[k] = v
    return out


def unknown_option_hint(scheme: str, name: str) -> str:
    """'options.X is not an option of <client>' with a did-you-mean from the client's own
    parameters (its constructor raised TypeError: unexpected keyword argument)."""
    import difflib
    import inspect

    from fsspec.registry import known_implementations

    known = {"endpoint_url", "client_kwargs", "config_kwargs", "key", "secret", "token", "anon"}
    cls_name = known_implementations.get(scheme, {}).get("class", "")
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(scheme)
        known |= {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")}
    except Exception:  # noqa: BLE001 - only for a suggestion
        pass
    known.discard(name)  # it was refused: "did you mean key?" for key helped nobody
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    client = cls_name.split(".")[0] or f"the {scheme}:// client"
    return f"options.{name} is not an option of {client}" + (f" (did you mean {close[0]}?)" if close else "")


# what every fsspec filesystem takes besides its own parameters (its listings cache, instances)
_FSSPEC_COMMON = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths",
                  "asynchronous", "loop", "batch_size"}
_AZURE = ("az", "abfs", "abfss")


# fsspec clients whose option names can be checked against their constructors (http hands
# unknown ones to aiohttp as request arguments, so it is left out)
_CHECKED_OPTIONS = ("gs", "gcs", "file", "local", "memory") + _AZURE


_AZURE_NOT_ENDPOINTS = {"endpoint_url", "endpoint", "account_url", "blob_endpoint", "url", "endpoint_suffix",
                        "blob_service_url", "account_endpoint"}


def check_option_names(scheme: str, options: dict) -> None:
    """gcsfs, adlfs and the local and memory file systems take **kwargs, so a misspelled
    option was accepted and ignored (`tokn: anon` mounted with the default credentials instead
    of anonymously). S3 options: s3_option_problems (s3fs is not imported here: the daemon of
    an obstore mount would carry it, and botocore, for nothing)."""
    if scheme not in _CHECKED_OPTIONS or not options:
        return
    import difflib
    import inspect

    try:
        import fsspec

        cls = fsspec.get_filesystem_class(scheme)
    except Exception:  # noqa: BLE001 - not installed: missing_package_hint says so
        return
    known = set(_FSSPEC_COMMON) | {"memmove_max_workers"}  # gcsfs reads that one from **kwargs
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            try:
                known |= {p for p in inspect.signature(init).parameters
                          if p not in ("self", "args", "kwargs", "storage_options")}
            except (TypeError, ValueError):
                pass
    for name in options:
        if name in known:
            continue
        if scheme in _AZURE and name in _AZURE_NOT_ENDPOINTS:
            # handed on to azure-identity, which ignores it: the mount reached the public endpoint
            raise ValueError(f"options.{name}: adlfs takes no such option (it would be ignored and "
                             "the mount would reach <account>.blob.core.windows.net); for another "
                             "endpoint such as Azurite give connection_string with BlobEndpoint=..., "
                             "or account_host: host[:port] (https)")
        if scheme in _AZURE and (name.startswith("exclude_")
                                 or not difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)):
            continue  # adlfs hands other keywords to azure-identity's DefaultAzureCredential
        raise ValueError(unknown_option_hint(scheme, name))


_OBSTORE_S3_NAMES = {"region", "region_name", "aws_access_key_id", "access_key_id", "aws_secret_access_key",
                     "secret_access_key", "aws_session_token", "session_token"}


def s3_option_problems(table: "MountTable", source: str = "mounts.yaml") -> list[str]:
    """Misspelled s3fs options, for `unifs config check` (the mount itself fails on them when
    s3fs refuses the keyword; the check said OK and printed the table), each as
    "source:line: problem"."""
    import inspect

    def where(i, name):
        try:  # the table no longer has its lines: the file has
            with open(source, encoding="utf-8") as f:
                line = yaml.load(f, Loader=_Loader)["mounts"][i]["options"].key_lines[name]
            return f"{source}:{line}"
        except Exception:  # noqa: BLE001 - changed since, or not a file: the name alone
            return source

    problems = []
    try:
        from botocore.session import Session
        from s3fs import S3FileSystem
    except ImportError:
        return problems
    known = set(_FSSPEC_COMMON)
    for fn in (S3FileSystem.__init__, Session.__init__):  # s3fs hands **kwargs to the session
        known |= {p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs")}
    for i, m in enumerate(table.mounts):
        scheme = m.url.split("://", 1)[0].lower()
        if scheme in ("s3", "s3a"):
            # the obstore client (client: auto or obstore) also takes region, access_key_id, ...
            ok = known | (set() if m.client == "fsspec" else _OBSTORE_S3_NAMES)
            problems += [f"{where(i, name)}: mounts[{i}] ({m.path}): {unknown_option_hint(scheme, name)}"
                         for name in m.options if name not in ok]
    return problems


GCS_TOKEN_MODES = {"anon", "browser", "cache", "cloud", "google_default"}


def check_gcs_token(options: dict) -> None:
    """gcsfs takes a token that is no mode and no existing file as a raw access token, so a
    mistyped key file path failed later as a network error at Google's token endpoint."""
    token = options.get("token")
    if isinstance(token, str) and not token.strip():
        raise ValueError("options.token is empty: leave it out for the default credentials, or give a "
                         "service-account file, anon, google_default or cloud")
    if not isinstance(token, str) or token in GCS_TOKEN_MODES or token.startswith("ya29."):
        return
    if not ("/" in token or token.endswith(".json")):
        return
    path = os.path.expanduser(token)
    if not os.path.isfile(path):
        raise ValueError(f"options.token: service-account file {token} does not exist"
                         + (" (it is a directory)" if os.path.isdir(path) else ""))
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as e:
        raise ValueError(f"options.token: cannot read {token}: {e.strerror}") from None
    except ValueError:
        raise ValueError(f"options.token: {token} is not a JSON service-account key file") from None
    if not isinstance(info, dict) or "type" not in info:
        raise ValueError(f"options.token: {token} is not a service-account key file (no 'type' field)")


def check_endpoints(options: dict) -> None:
    """An endpoint option must be an http(s) URL: clients reject anything else deep inside
    (obstore with a panic), after the mount has started."""
    from urllib.parse import urlsplit

    places = [(k, options.get(k)) for k in _ENDPOINT_KEYS]
    ck = options.get("client_kwargs")
    if isinstance(ck, dict):
        places += [(f"client_kwargs.{k}", ck.get(k)) for k in _ENDPOINT_KEYS]
    for name, v in places:
        if v is None:
            continue
        parts = urlsplit(v) if isinstance(v, str) else None
        try:
            port_ok = parts is not None and (parts.port is None or parts.port > 0)
        except ValueError:
            port_ok = False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(f"options.{name} must be an http:// or https:// URL like http://127.0.0.1:9000, "
                             f"got {redact_url(str(v))!r}")


def missing_package_hint(scheme: str) -> Optional[str]:
    """A one-line hint when the fsspec backend for a scheme is not installed."""
    import fsspec
    from fsspec.registry import known_implementations

    try:
        top = known_implementations.get(scheme, {}).get("class", "").split(".")[0]
        if top and top != "fsspec":
            # a third-party backend: check that it is installed without importing it (s3fs
            # alone costs the daemon ~20 MiB and 0.15 s, and an S3 mount reads through obstore)
            if importlib.util.find_spec(top) is None:
                raise ImportError(top)
            return None
        fsspec.get_filesystem_class(scheme)
        # fsspec's hdfs class imports pyarrow only when a client is made
        if scheme in ("hdfs", "viewfs") and importlib.util.find_spec("pyarrow") is None:
            raise ImportError("hdfs:// needs pyarrow")
        return None
    except ImportError:
        impl = known_implementations.get(scheme, {})
        extra = {"gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
                 "adl": "azure", "hdfs": "hdfs"}.get(scheme)
        err = impl.get("err") or f"the fsspec backend for {scheme}:// is not installed"
        hint = f"pip install 'unifs[{extra}]'" if extra else ""
        return f"{err}{' (' + hint + ')' if hint else ''}"
    except ValueError:
        return f"unknown scheme '{scheme}://'"


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def find_config(explicit: Optional[str]) -> Path:
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise UserError(f"config file {explicit} does not exist")
        return p
    env = os.environ.get("UNIFS_CONFIG")
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise UserError(f"config file {env} (from $UNIFS_CONFIG) does not exist")
        return p
    for candidate in (Path("mounts.yaml"), Path("~/.config/unifs/mounts.yaml").expanduser(),
                      Path("/etc/unifs/mounts.yaml")):
        if candidate.exists():
            return candidate
    raise UserError(f"no mount table found (looked at {SEARCH_ORDER_HELP}); pass --config FILE")


def _describe(raw, loc: tuple) -> str:
    """'mounts[1] (/ckpt).options.key' for a location tuple."""
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, _AtKey):
            break
        if isinstance(part, int):
            out += f"[{part}]"
            if isinstance(node, list) and part < len(node):
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("path"), str):
                    shown = node["path"]
                    if any(ord(c) < 32 for c in shown):
                        shown = repr(shown)[1:-1]  # one line per problem
                    out += f" ({shown or repr(shown)})"
            else:
                node = None
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "top level"


class _AtKey(str):
    """A location part used for the line number only, not the description."""


def _pydantic_problem(err: dict) -> tuple[tuple, str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        # described by its parent entry, located at the key's own line
        return loc[:-1] + (_AtKey(loc[-1]),), f"unknown key '{loc[-1]}'" + _suggest(loc[-1], err)
    if kind == "missing":
        return loc[:-1], f"missing required key '{loc[-1]}'"
    if kind == "too_short" and loc == ("mounts",):
        return loc, "must list at least one mount (path and url)"
    if kind in ("dict_type", "model_type"):
        return loc, "must be a mapping of keys to values"
    if kind == "list_type":
        return loc, "must be a list"
    if kind in _TYPE_WORDS:
        return loc, f"must be {_TYPE_WORDS[kind]} (got {err.get('input')!r})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return loc, msg


# pydantic's "Input should be a valid string" and the like, in the table's own words
_TYPE_WORDS = {"string_type": "text (quote it)", "bool_type": "true or false", "bool_parsing": "true or false",
               "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
               "float_type": "a number", "float_parsing": "a number"}


def _suggest(key, err) -> str:
    import difflib

    fields = {
        (): MountTable.model_fields,
        ("mounts",): MountEntry.model_fields,
        ("store",): StoreSettings.model_fields,
        ("read",): ReadSettings.model_fields,
        ("write",): WriteSettings.model_fields,
        ("cache",): CacheSettings.model_fields,
    }
    loc = tuple(p for p in err["loc"][:-1] if not isinstance(p, int))
    names = fields.get(loc)
    if not names or not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_table(text: str, source: str = "mounts.yaml", env=None) -> MountTable:
    """Validate mount-table YAML text; raise ConfigError with one line per problem."""
    env = os.environ if env is None else env
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: YAML error: {e}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty; it needs a 'mounts:' list"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}:1: top level must be a mapping with a 'mounts:' list"])

    for k in [k for k in raw if isinstance(k, str) and k.startswith("x-")]:
        del raw[k]  # a place for YAML anchors shared by mounts (as in docker compose files)
    if _expanded_size(raw, {}) > MAX_VALUES:
        raise ConfigError([f"{source}: more than {MAX_VALUES} values once YAML aliases are expanded; "
                           "a mount table needs far fewer (an alias bomb?)"])
    interp = _Interpolation(env)
    interp.apply(raw)
    problems = [(loc, msg) for loc, msg in interp.problems]
    for m in raw.get("mounts") if isinstance(raw.get("mounts"), list) else []:
        if isinstance(m, dict):  # before any check can quote a value in its message
            remember_secrets(m.get("options"), gcs=_is_gcs(m.get("url")))

    table = None
    unset = [loc for loc, _ in problems]
    try:
        table = MountTable.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            loc, msg = _pydantic_problem(err)
            # a field whose variable is unset has one problem, not also "got ''"
            if not any(tuple(loc[:len(u)]) == tuple(u) or tuple(u[:len(loc)]) == tuple(loc) for u in unset):
                problems.append((loc, msg))

    if table is not None:
        problems.extend(_cross_checks(table))
        for m in table.mounts:
            remember_secrets(m.options, gcs=_is_gcs(m.url))

    if problems:
        lines = []
        seen = set()
        for loc, msg in problems:
            line = _line_of(raw, loc)
            text_line = f"{source}:{line}: {_describe(raw, loc)}: {msg}" if line else \
                f"{source}: {_describe(raw, loc)}: {msg}"
            if text_line not in seen:
                seen.add(text_line)
                lines.append(text_line)
        raise ConfigError(lines)
    return table


def _cross_checks(table: MountTable) -> list[tuple[tuple, str]]:
    problems = []
    seen: dict[str, int] = {}
    for i, m in enumerate(table.mounts):
        if m.path in seen:
            problems.append((("mounts", i, "path"),
                             f"duplicate path {m.path} (already used by mounts[{seen[m.path]}])"))
        else:
            seen[m.path] = i
        scheme = m.url.split("://", 1)[0].lower()
        hint = missing_package_hint(scheme)
        if hint:
            problems.append((("mounts", i, "url"), hint))
    disk_modes = [("cache", "mode")] if table.cache.mode in ("disk", "tiered") else []
    disk_modes += [("mounts", i, "cache") for i, m in enumerate(table.mounts) if m.cache in ("disk", "tiered")]
    if disk_modes and table.cache.disk == 0:
        problems.append((disk_modes[0], "needs a disk tier, but cache.disk is 0: give cache.disk a size "
                                        "(or use mode ram)"))
    inherit = any(m.cache is None for m in table.mounts)
    ram_modes = [("cache", "mode")] if inherit and table.cache.mode in ("ram", "tiered") else []
    ram_modes += [("mounts", i, "cache") for i, m in enumerate(table.mounts) if m.cache in ("ram", "tiered")]
    if ram_modes and table.cache.ram == 0:
        problems.append((ram_modes[0], "needs a RAM tier, but cache.ram is 0: give cache.ram a size "
                                       "(or use mode disk, or none)"))
    for tier, modes in (("ram", ram_modes), ("disk", disk_modes)):
        size = getattr(table.cache, tier)
        if modes and 0 < size < 2 * table.cache.block_size:
            # one block is not enough either: disk blocks carry a header, and the RAM bound
            # counts a block being fetched into it
            name = "RAM" if tier == "ram" else tier
            problems.append((("cache", tier), f"{format_size(size)} is less than two blocks (cache.block_size "
                                              f"{format_size(table.cache.block_size)}): the {name} tier could "
                                              "keep nothing"))
    memory = physical_memory()
    if memory and table.cache.ram > memory:
        problems.append((("cache", "ram"), f"{format_size(table.cache.ram)} is more than this machine's memory "
                                           f"({format_size(memory)})"))
    staging, cache = os.path.realpath(table.write.staging_dir), os.path.realpath(table.cache.dir)
    if under(staging, cache):
        # inside it too: an operator freeing space with `rm -rf` of the cache dir would take them
        problems.append((("write", "staging_dir"), ("must differ from cache.dir" if staging == cache else
                                                    f"must not be inside cache.dir {table.cache.dir}")
                         + ": staged files may be the only copy of data the store has not accepted, the "
                           "cache is disposable"))
    return problems


STDIN = "-"  # --config -: the table on standard input (from a secrets manager, no file)


def read_config(path: Optional[str] = None) -> tuple[str, Path]:
    """The mount table's text and where it came from (Path("-") for standard input)."""
    if path == STDIN:
        try:
            return sys.stdin.read(), Path(STDIN)
        except UnicodeDecodeError:
            raise UserError("the config on standard input is not UTF-8 text") from None
    cfg_path = find_config(path)
    try:
        return cfg_path.read_text(), cfg_path
    except OSError as e:
        raise UserError(f"cannot read config file {cfg_path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {cfg_path} is not UTF-8 text") from None


def parse_config(text: str, cfg_path: Path) -> MountTable:
    """parse_table of what read_config gave, its messages naming where it came from."""
    return parse_table(text, "(standard input)" if str(cfg_path) == STDIN else str(cfg_path))


def load_config(path: Optional[str] = None) -> tuple[MountTable, Path]:
    text, cfg_path = read_config(path)
    return parse_config(text, cfg_path), cfg_path


# ---------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------

def is_secret_key(name: str) -> bool:
    """A credential's option name, also misspelled (`secert:` was printed in clear by `config
    check` before the mount refused the name)."""
    import difflib

    n = str(name).lower()
    if n in ("anon", "key_prefix", "keyfile_name"):
        return False
    if any(w in n for w in _SECRET_WORDS):
        return True
    words = [w for w in _SECRET_WORDS if len(w) >= 4]
    return any(difflib.get_close_matches(part, words, n=1, cutoff=0.8)
               for part in re.split(r"[^a-z]+", n) if len(part) >= 4 and part not in _NOT_SECRET_WORDS)


_NOT_SECRET_WORDS = {"secure", "sessions"}  # near a secret word, but no credential


def redact(value: Any, key: str = "") -> Any:
    """A copy of an options tree with credential values replaced by ***."""
    if key and is_secret_key(key) and not isinstance(value, (dict, list, bool)) and value is not None:
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


_QUERY_SECRET = re.compile(r"([?&;](?:sig|signature|token|code|key|x-amz-signature|x-amz-credential|"
                           r"x-amz-security-token|x-goog-signature|x-goog-credential|access_token|"
                           r"refresh_token|id_token|api_key|apikey|private_key|client_secret|password|"
                           r"accountkey|sharedaccesssignature)=)([^&;\s'\")]+)", re.I)

# secret values of the loaded mount tables: scrubbed from any text shown or logged, since
# client libraries put credentials into their error messages (a token in a URL, a key file)
_KNOWN_SECRETS: set[str] = set()


def _is_gcs(url) -> bool:
    return isinstance(url, str) and url.lower().startswith(("gs://", "gcs://"))


def remember_secrets(options: Any, key: str = "", gcs: bool = False) -> None:
    """gcs: the options of a GCS mount, whose `token` may name a key file or a mode."""
    if isinstance(options, dict):
        for k, v in options.items():
            remember_secrets(v, str(k), gcs and not key)
    elif isinstance(options, list):
        for v in options:
            remember_secrets(v, key)
    elif isinstance(options, str) and key and is_secret_key(key) and len(options) >= 4 \
            and not (gcs and key == "token" and (options in GCS_TOKEN_MODES or _names_a_file(options))):
        from urllib.parse import quote, quote_plus

        for form in (options, quote(options, safe=""), quote_plus(options)):
            _KNOWN_SECRETS.add(form)
        # a JSON key file given inline: its private key appears line by line in errors
        for line in options.splitlines():
            if len(line.strip()) >= 16:
                _KNOWN_SECRETS.add(line.strip())


def _names_a_file(token: str) -> bool:
    """A GCS token that is a key file's name, not a secret (an error may name it)."""
    return token.startswith(("/", "~", "./", "../")) or token.endswith(".json")


def scrub(text: str) -> str:
    """text with known secret values, URL passwords and signed-URL secrets replaced by ***."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return redact_url(text)


def redact_url(url: str) -> str:
    """Hide URL passwords (scheme://user:pass@host) and signed-URL query secrets, also
    inside longer text such as an error message."""
    url = re.sub(r"(://[^/@:\s]+):[^/@\s]+@", r"\1:" + REDACTED + "@", url)
    # a ':' ending the value is the message's, not the secret's ("... sig=X: not found")
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED + (":" if m.group(2).endswith(":") else ""), url)


def describe_table(table: MountTable) -> dict:
    """The resolved table as plain data, secrets redacted (for `config check` and status)."""
    data = table.model_dump()
    for m in data["mounts"]:
        if m["url"].split("://", 1)[0].lower() not in ("s3", "s3a"):
            m.pop("client", None)  # applies to s3:// only
        m["url"] = redact_url(m["url"])
        m["options"] = redact(m["options"])
    return data


def join_mount_path(parent: str, name: str) -> str:
    return posixpath.join(parent, name)
