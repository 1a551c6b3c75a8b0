"""fgad-sign: Ed25519 keys for bundles, signing an existing bundle, and checking one without running it.

``fgad-sign keygen KEY`` writes KEY (the private key, PEM, mode 0600) and KEY.pub (its public key, for
``fgad-run --trust``); ``fgad-sign sign BUNDLE --key KEY`` signs a bundle whose files are intact;
``fgad-sign verify BUNDLE [--trust KEY.pub] [--strict]`` runs the integrity checks fgad-run runs first.
Needs ``pip install 'fgad[sign]'`` (cryptography) for keys and signatures. See docs/bundle.md, "Integrity".
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from fgad.cli.common import friendly_errors, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Sign fgad bundles and check their integrity (docs/bundle.md)."""


@main.command()
@click.argument("key", type=click.Path(path_type=Path))
@friendly_errors
def keygen(key: Path) -> None:
    """Write a new Ed25519 private key to KEY and its public key to KEY.pub (never overwrites)."""
    from fgad.bundle.signing import PASSWORD_ENV, generate_key_pair, load_trusted_key

    try:
        private, public = generate_key_pair(key)
    except FileExistsError as err:
        raise click.ClickException(str(err)) from err
    trusted = load_trusted_key(public)
    encrypted = f"encrypted with ${PASSWORD_ENV}" if os.environ.get(PASSWORD_ENV) else "unencrypted"
    click.echo(f"private key: {private} ({encrypted}; keep it secret)")
    click.echo(f"public key:  {public} (key id {trusted.key_id}): give it to fgad-run --trust")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path),
              help="Ed25519 private key (PEM) to sign with.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def sign(bundle: Path, key: Path, verbose: bool) -> None:
    """Sign BUNDLE as it is (manifest.digest, manifest.sig); refused unless every file is intact."""
    setup_logging(verbose)
    from fgad.bundle import BundleError
    from fgad.bundle.staging import sign_bundle, signing_key

    signer = signing_key(key)
    assert signer is not None
    try:
        digest = sign_bundle(bundle, signer)
    except BundleError as err:
        raise click.ClickException(f"not signed: {err}") from err
    click.echo(f"bundle {bundle}: manifest digest {digest[:16]}..., signed with key {signer.key_id}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM) the bundle must be signed with; repeat for several.")
@click.option("--strict", is_flag=True, help="Refuse files the manifest does not list (default: warn).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def verify(bundle: Path, trust: tuple[Path, ...], strict: bool, verbose: bool) -> None:
    """Check BUNDLE's manifest digest, signature (with --trust) and every file's sha256, without running it."""
    setup_logging(verbose)
    from fgad.bundle import BundleError, check_contents, check_integrity, load_manifest
    from fgad.bundle.files import check_files

    try:
        manifest = load_manifest(bundle)
        report = check_integrity(manifest, bundle, trust=list(trust) or None, strict=strict)
        check_files(manifest, bundle, verify_hashes=True)
        check_contents(manifest, bundle)
    except BundleError as err:
        raise click.ClickException(str(err)) from err
    if report.signed_by is not None:
        signed = f"signed by trusted key {report.signed_by.key_id}"
    elif report.signature_key_id:
        signed = f"signed by key {report.signature_key_id} (not verified: give --trust)"
    else:
        signed = "not signed"
    protected = f"manifest digest {report.digest[:16]}..." if report.protected else "NO manifest digest (unprotected)"
    unknown = f", {len(report.unknown)} unlisted file(s)" if report.unknown else ""
    click.echo(f"bundle {bundle}: {len(manifest.sha256)} files intact, {protected}, {signed}{unknown}")


if __name__ == "__main__":
    main()
