"""``genforge security keygen|rekey|encrypt|decrypt|status``: plain functions, docstrings as help.

Keys come from ``--key-file`` or the environment (``$GENFORGE_ENCRYPTION_KEY_FILE``,
``$GENFORGE_ENCRYPTION_KEY``), never from the command line; see :mod:`genforge.crypto`.
"""

from __future__ import annotations

from pathlib import Path

import click

from genforge.cli.options import CONTEXT, Group, key_file_option, out_option
from genforge.errors import GenforgeError


@click.group(cls=Group, context_settings=CONTEXT)
def security() -> None:
    """Encryption keys and encrypted files: keygen, rekey, encrypt, decrypt, status."""


@security.command("keygen", context_settings=CONTEXT)
@click.argument("keyfile", metavar="KEYFILE")
@click.option("--id", "key_id", help="name of the new key (default: its fingerprint)")
@click.option("--add", is_flag=True, help="add a new primary key to an existing key file")
def keygen(keyfile: str, key_id: str | None, add: bool) -> int:
    """Make a key file: genforge security keygen KEYFILE [--id NAME]; --add appends a new primary key (rotation).

    The file is written atomically with mode 0600. With --add, the keys already in KEYFILE stay (old files
    stay readable) and the new key becomes the primary that new files are encrypted with; then move old
    files to it with 'genforge security rekey RUN ...' and, once nothing uses them, delete the old lines.
    """
    from genforge import crypto

    path = Path(keyfile)
    if add:
        keyring = crypto.add_key(crypto.read_key_file(path), key_id)
    else:
        if path.exists():
            raise GenforgeError(f"{path} exists: give --add to add a new primary key to it, or another name")
        keyring = crypto.add_key(None, key_id, str(path))
    crypto.write_key_file(path, keyring)
    print(f"genforge: {'added' if add else 'wrote'} key '{keyring.primary}' (primary) "
          f"{'to' if add else 'in'} {path} ({len(keyring.keys)} key{'s' if len(keyring.keys) > 1 else ''}, "
          "mode 0600)")
    return 0


@security.command("rekey", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, metavar="RUN_OR_FILE...")
@key_file_option
def rekey(paths: tuple[str, ...]) -> int:
    """Re-encrypt files under the primary key: genforge security rekey RUN_OR_FILE ... [--key-file KEYS].

    Every encrypted file found (directories are searched) that uses another key of the keyring is decrypted
    and encrypted again under the primary key, one file at a time, each atomically and in bounded memory.
    The old keys must still be in the keyring; a crash leaves each file either old or new, both readable.
    """
    from genforge import crypto

    keyring = crypto.load_keyring()
    files = crypto.encrypted_files(paths)
    changed = [f for f in files if crypto.rekey_file(f, keyring)]
    for f in changed:
        print(f"rekeyed {f}")
    print(f"genforge: {len(changed)} of {len(files)} encrypted files moved to key '{keyring.primary}' "
          f"({len(files) - len(changed)} already used it)")
    return 0


@security.command("encrypt", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, metavar="FILE_OR_DIR...")
@key_file_option
def encrypt(paths: tuple[str, ...]) -> int:
    """Encrypt files in place under the primary key: genforge security encrypt FILE_OR_DIR ... .

    A directory (a run or model directory) gets its weights (model.safetensors) and resume states
    (state.pt) encrypted; name files to encrypt others (an npz data set: genforge then reads it as
    npz:FILE with the key). Each file is replaced atomically; files already encrypted are left as they are.
    """
    from genforge.models.files import WEIGHTS
    from genforge import crypto
    from genforge.training.checkpoint import STATE

    keyring = crypto.load_keyring()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.name in (WEIGHTS, STATE) and q.is_file()
                            and not any(part.startswith(".") for part in q.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise GenforgeError(f"not found: {p}")
    done = [f for f in files if crypto.encrypt_file(f, keyring)]
    for f in done:
        print(f"encrypted {f}")
    print(f"genforge: encrypted {len(done)} files with key '{keyring.primary}' "
          f"({len(files) - len(done)} already were)")
    return 0


@security.command("decrypt", context_settings=CONTEXT)
@click.argument("file", metavar="FILE")
@out_option("where to write the plaintext (mode 0600)", metavar="PLAIN")
@key_file_option
def decrypt(file: str, out: str) -> int:
    """Write the plaintext of an encrypted file: genforge security decrypt FILE --out PLAIN.

    PLAIN is written atomically with mode 0600; nothing is written when the key is wrong or the file was
    altered. The name is authenticated: decrypt a file under the name it was encrypted with.
    """
    from genforge import crypto

    keyring = crypto.load_keyring()
    if Path(out).exists() and Path(out).resolve() == Path(file).resolve():
        raise GenforgeError("--out must differ from FILE")
    out = crypto.decrypt_file(file, out, keyring)
    print(f"genforge: decrypted {file} to {out}")
    return 0


@security.command("status", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, metavar="RUN_OR_FILE...")
@click.option("--all", "show_all", is_flag=True, help="list every plain file too")
def status(paths: tuple[str, ...], show_all: bool) -> int:
    """Which files are encrypted, and with which key: genforge security status RUN_OR_FILE ... ."""
    from genforge import crypto

    for p in map(Path, paths):
        if not p.exists():
            raise GenforgeError(f"not found: {p}")
        for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
            key_id = crypto.key_id_of(f)
            if key_id is not None:
                print(f"{f}: encrypted, key '{key_id}'")
            elif show_all or f.name in ("model.safetensors", "state.pt") or f.suffix == ".npz":
                print(f"{f}: plain")
    return 0
