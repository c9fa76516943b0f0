"""The `unifs` command line: argument parsing and messages, no logic."""

from __future__ import annotations

import errno
import json
import os
import sys

import click
import yaml

from unifs.errors import ConfigError, UserError


def scrub(text: str) -> str:
    from unifs.config import scrub as _scrub  # pydantic is slow to import; only on errors

    return _scrub(text)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _unwritable_output(e: BaseException) -> bool:
    """A full disk under stdout (no file name: not one of ours)."""
    return isinstance(e, OSError) and e.errno == errno.ENOSPC and not e.filename


class _Group(click.Group):
    """Every failure is one line per problem and a non-zero exit, never a traceback."""

    def main(self, *args, **kwargs):
        # --help and usage output are written before invoke(): a full disk there too
        try:
            return super().main(*args, **kwargs)
        except OSError as e:
            if not _unwritable_output(e):
                raise
            _silence_stdout()  # `> /dev/full`
            click.echo(f"unifs: error: cannot write the output: {e.strerror}", err=True)
            sys.exit(1)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            for line in e.problems:
                click.echo(f"unifs: error: {scrub(line)}", err=True)
            sys.exit(1)
        except UserError as e:
            click.echo(f"unifs: error: {scrub(str(e))}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("unifs: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `unifs status | head`: the reader has what it wanted
            _silence_stdout()
            sys.exit(141)
        except Exception as e:  # noqa: BLE001
            if _unwritable_output(e) or os.environ.get("UNIFS_DEBUG"):
                raise  # main() reports output that cannot be written
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"unifs: internal error: {type(e).__name__}: {scrub(first)} "
                       "(set UNIFS_DEBUG=1 for a traceback)", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unifs")
def main():
    """unifs: one FUSE namespace over S3, GCS, Azure Blob, HDFS and any fsspec store."""


_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


@main.command()
@click.argument("mountpoint")
@click.option("--config", "-c", "config", metavar="FILE", help="mount table (default: search order; - reads it from standard input)")
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground (for systemd and docker)")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="FUSE option, e.g. -o allow_other (repeatable)")
@click.option("--log-level", default="info", type=_LEVELS, show_default=True)
@click.option("--log-file", metavar="FILE", help="log here (default: stderr in the foreground)")
@click.option("--status-fd", type=int, hidden=True)
def mount(mountpoint, config, foreground, options, log_level, log_file, status_fd):
    """Mount the namespace of the mount table at MOUNTPOINT."""
    from unifs import daemon, mountinfo
    from unifs.config import STDIN, parse_config, read_config

    mp = mountinfo.normalise_mountpoint(mountpoint)
    if log_file:
        # the daemon runs in /: a relative name would land there
        log_file = os.path.abspath(log_file)
    try:
        if config is not None and not config.strip():
            raise UserError("--config needs a file name (it was empty)")
        text, cfg_path = read_config(config)
        table = parse_config(text, cfg_path)
        opts = daemon.parse_fuse_options(options)
        daemon.check_local_dirs(mp, table)
        if log_file:
            daemon.check_log_file(log_file)
        if status_fd is None:
            cleaned = daemon.clean_stale_mount(mp)
            if cleaned:
                click.echo(f"unifs: {cleaned}", err=True)
            mountinfo.check_mountpoint(mp, nonempty=bool(opts.get("nonempty")))
            mountinfo.check_dev_fuse()
    except UserError as e:
        _report_to_status_fd(status_fd, e)
        raise
    if foreground:
        daemon.run_foreground(mp, table, cfg_path, options, log_level, log_file, status_fd)
        return
    # a table from a pipe (`--config <(sops -d t.yaml)`, `--config -`) cannot be read twice:
    # the daemon gets its text on its standard input
    piped = str(cfg_path) == STDIN or not cfg_path.is_file()
    log_path = daemon.start_background(mp, cfg_path, options, log_level, log_file,
                                       config_text=text if piped else None)
    _done(f"unifs: mounted {mp} ({len(table.mounts)} store mount(s)); log: {log_path}")


def _done(message: str) -> None:
    """The report of a change that has happened: output that cannot be written (a closed pipe,
    a full disk) must not turn it into a failure (exit 1 while the mount is live)."""
    try:
        click.echo(message)
        sys.stdout.flush()
    except OSError:
        _silence_stdout()


def _report_to_status_fd(fd, err):
    if fd is None:
        return
    try:
        msg = scrub("; ".join(err.problems) if isinstance(err, ConfigError) else str(err))
        os.write(fd, b"error:" + msg.encode() + b"\n")
    except OSError:
        pass


@main.command()
@click.argument("mountpoint")
@click.option("--lazy", "-z", is_flag=True, help="detach now even if files are open")
@click.option("--force", is_flag=True,
              help="do not wait for pending uploads (their staged files stay on local disk)")
def umount(mountpoint, lazy, force):
    """Unmount MOUNTPOINT once pending uploads are done (also cleans up a dead daemon's mount)."""
    from unifs import daemon, mountinfo

    _done("unifs: " + daemon.unmount(mountinfo.normalise_mountpoint(mountpoint), lazy=lazy,
                                          force=force, progress=sys.stderr.isatty()))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json):
    """List live unifs mounts and their stores."""
    from unifs import daemon

    rows = daemon.status()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no unifs mounts")
        return
    for r in rows:
        if r.get("other_run_dir"):
            click.echo(f"{r['mountpoint']}  {r['state']}  started with another run directory (another user's, "
                       "or another UNIFS_RUN_DIR): `unifs status` with that one shows its pid, table and "
                       "uploads")
            continue
        click.echo(f"{r['mountpoint']}  {r['state']}  pid {r['pid'] or '?'}  config {r['config'] or '?'}")
        for m in r["mounts"]:
            ro = "  (read-only)" if m.get("read_only") else ""
            click.echo(f"  {m['path']:<24} -> {m['url']}{ro}")
        for p in r.get("pending", []):
            what = {"pending": "upload pending", "open": "upload failed, file still open",
                    "failed": "rejected by the store, not retried",
                    "stranded": "not uploaded: the mount table no longer maps this path to its store"}.get(
                p.get("state"), "not uploaded (was open when a daemon stopped)")
            err = f"; last error: {p['error']}" if p.get("error") else ""
            site = f" at {p['site']}" if p.get("site") else ""
            click.echo(f"  {what}: {p['path']} ({p.get('size', 0)} bytes) -> {p['url']}/{p['key']}{site}"
                       f"  local copy: {p['data']}{err}")
        if r["state"] == "unmounted":
            click.echo("  not mounted: mounting it again with a mount table that maps these paths uploads "
                       "the pending and stranded files; orphaned and failed ones stay until you delete them")
        elif r["state"] == "detached":
            click.echo("  detached by a lazy unmount: its daemon serves the files still open there and "
                       "exits after the last one closes")
        elif r["state"] == "stale":
            click.echo(f"  the daemon is gone: run 'unifs umount {r['mountpoint']}'")
        elif r["state"] == "busy":
            click.echo("  the daemon answers, but its file system requests wait on a store that does not "
                       "answer (each store call gives up after store.timeout and its retries)")
        elif r["state"] == "hung":
            click.echo(f"  the daemon does not answer (stopped or stuck): 'unifs umount --force "
                       f"{r['mountpoint']}' aborts and unmounts it")


@main.group()
def cache():
    """Block cache commands (talk to live daemons)."""


@cache.command("stats")
@click.argument("mountpoint", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cache_stats(mountpoint, as_json):
    """Per tier: bytes, blocks, hit ratio, evictions; per mount: bytes from store vs cache."""
    from unifs import cachecmd

    result = cachecmd.stats(mountpoint)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        if any("error" in s for s in result.values()):
            sys.exit(1)
        return
    failed = []
    for mp, s in result.items():
        if "error" in s:
            failed.append(s["error"])
        else:
            click.echo("\n".join(cachecmd.format_stats(mp, s)))
    for why in failed:
        click.echo(f"unifs: error: {why}", err=True)
    if failed:
        sys.exit(1)


@cache.command("clear")
@click.argument("path", required=False, default=None)
def cache_clear(path):
    """Drop cached blocks of PATH (a mount point or anything below one; default: all mounts)."""
    from unifs import cachecmd

    if path is None:
        failed = 0
        for mp in cachecmd.live_mountpoints():
            try:
                click.echo("unifs: " + cachecmd.clear(mp))
            except UserError as e:
                click.echo(f"unifs: error: {e}", err=True)
                failed += 1
        if failed:
            sys.exit(1)
        return
    click.echo("unifs: " + cachecmd.clear(path))


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 256),
              help="files read in parallel")
def warmup(paths, threads):
    """Load files or directories under a unifs mount into the block cache (RAM and disk)."""
    from unifs import cachecmd

    n, total = cachecmd.warmup(list(paths), threads, progress=sys.stderr.isatty(),
                               warn=lambda w: click.echo(f"unifs: warning: {w}", err=True))
    from unifs.units import format_size
    click.echo(f"unifs: warmed {n} file(s), {format_size(total)}")


@main.group()
def config():
    """Mount table commands."""


@config.command("check")
@click.option("--config", "-c", "config_file", metavar="FILE", help="mount table (default: search order; - reads it from standard input)")
def config_check(config_file):
    """Validate the mount table and print it resolved, secrets redacted."""
    from unifs.config import describe_table, load_config, s3_option_problems

    if config_file is not None and not config_file.strip():
        raise UserError("--config needs a file name (it was empty)")
    table, path = load_config(config_file)
    label = "(standard input)" if str(path) == "-" else str(path)
    problems = s3_option_problems(table, label)
    if problems:
        raise ConfigError(problems)
    click.echo(f"# {label}: OK, {len(table.mounts)} mount(s)")
    click.echo(yaml.safe_dump(describe_table(table), sort_keys=False, allow_unicode=True).rstrip())


@main.command()
@click.option("--files", default=500, show_default=True, help="number of sample images")
@click.option("--keep", is_flag=True, help="leave the server and mount running (prints how to stop them)")
def demo(files, keep):
    """Start a local S3 server, load sample images, mount them and read every file."""
    from unifs.demo import run_demo

    run_demo(files=files, keep=keep)
