"""``genforge security keygen|rekey|encrypt|decrypt|status``: plain functions, docstrings as help.

Keys come from ``--key-file`` or the environment (``$GENFORGE_ENCRYPTION_KEY_FILE``,
``$GENFORGE_ENCRYPTION_KEY``), never from the command line; see :mod:`genforge.crypto`.
"""

from __future__ import annotations

from pathlib import Path

from genforge.errors import GenforgeError

KEY_FILE_HELP = ("key file: ID:KEY lines, the last the primary (default $GENFORGE_ENCRYPTION_KEY_FILE, "
                 "else $GENFORGE_ENCRYPTION_KEY); keys are never taken on the command line")


def cmd_keygen(args) -> int:
    """Make a key file: genforge security keygen KEYFILE [--id NAME]; --add appends a new primary key (rotation).

    The file is written atomically with mode 0600. With --add, the keys already in KEYFILE stay (old files
    stay readable) and the new key becomes the primary that new files are encrypted with; then move old
    files to it with 'genforge security rekey RUN ...' and, once nothing uses them, delete the old lines.
    """
    from genforge import crypto

    path = Path(args.keyfile)
    if args.add:
        keyring = crypto.add_key(crypto.read_key_file(path), args.id)
    else:
        if path.exists():
            raise GenforgeError(f"{path} exists: give --add to add a new primary key to it, or another name")
        keyring = crypto.add_key(None, args.id, str(path))
    crypto.write_key_file(path, keyring)
    print(f"genforge: {'added' if args.add else 'wrote'} key '{keyring.primary}' (primary) "
          f"{'to' if args.add else 'in'} {path} ({len(keyring.keys)} key{'s' if len(keyring.keys) > 1 else ''}, "
          "mode 0600)")
    return 0


def cmd_rekey(args) -> int:
    """Re-encrypt files under the primary key: genforge security rekey RUN_OR_FILE ... [--key-file KEYS].

    Every encrypted file found (directories are searched) that uses another key of the keyring is decrypted
    and encrypted again under the primary key, one file at a time, each atomically and in bounded memory.
    The old keys must still be in the keyring; a crash leaves each file either old or new, both readable.
    """
    from genforge import crypto

    keyring = crypto.load_keyring()
    files = crypto.encrypted_files(args.paths)
    changed = [f for f in files if crypto.rekey_file(f, keyring)]
    for f in changed:
        print(f"rekeyed {f}")
    print(f"genforge: {len(changed)} of {len(files)} encrypted files moved to key '{keyring.primary}' "
          f"({len(files) - len(changed)} already used it)")
    return 0


def cmd_encrypt(args) -> int:
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
    for p in map(Path, args.paths):
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


def cmd_decrypt(args) -> int:
    """Write the plaintext of an encrypted file: genforge security decrypt FILE --out PLAIN.

    PLAIN is written atomically with mode 0600; nothing is written when the key is wrong or the file was
    altered. The name is authenticated: decrypt a file under the name it was encrypted with.
    """
    from genforge import crypto

    keyring = crypto.load_keyring()
    if Path(args.out).exists() and Path(args.out).resolve() == Path(args.file).resolve():
        raise GenforgeError("--out must differ from FILE")
    out = crypto.decrypt_file(args.file, args.out, keyring)
    print(f"genforge: decrypted {args.file} to {out}")
    return 0


def cmd_status(args) -> int:
    """Which files are encrypted, and with which key: genforge security status RUN_OR_FILE ... ."""
    from genforge import crypto

    for p in map(Path, args.paths):
        if not p.exists():
            raise GenforgeError(f"not found: {p}")
        for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
            key_id = crypto.key_id_of(f)
            if key_id is not None:
                print(f"{f}: encrypted, key '{key_id}'")
            elif args.all or f.name in ("model.safetensors", "state.pt") or f.suffix == ".npz":
                print(f"{f}: plain")
    return 0


def add_security_commands(sub) -> None:
    """Register ``genforge security ...`` on the genforge parser's subcommands."""

    def doc(fn):
        return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()

    p = sub.add_parser("security", help="encryption keys and encrypted files: keygen, rekey, encrypt, decrypt, "
                                        "status")
    actions = p.add_subparsers(dest="security_command", required=True, metavar="ACTION")

    short, long = doc(cmd_keygen)
    q = actions.add_parser("keygen", help=short, description=long)
    q.add_argument("keyfile", help="key file to write (mode 0600)")
    q.add_argument("--id", help="name of the new key (default: its fingerprint)")
    q.add_argument("--add", action="store_true", help="add a new primary key to an existing key file")
    q.set_defaults(func=cmd_keygen)

    short, long = doc(cmd_rekey)
    q = actions.add_parser("rekey", help=short, description=long)
    q.add_argument("paths", nargs="+", metavar="RUN_OR_FILE")
    q.add_argument("--key-file", help=KEY_FILE_HELP)
    q.set_defaults(func=cmd_rekey)

    short, long = doc(cmd_encrypt)
    q = actions.add_parser("encrypt", help=short, description=long)
    q.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    q.add_argument("--key-file", help=KEY_FILE_HELP)
    q.set_defaults(func=cmd_encrypt)

    short, long = doc(cmd_decrypt)
    q = actions.add_parser("decrypt", help=short, description=long)
    q.add_argument("file")
    q.add_argument("--out", required=True, help="where to write the plaintext (mode 0600)")
    q.add_argument("--key-file", help=KEY_FILE_HELP)
    q.set_defaults(func=cmd_decrypt)

    short, long = doc(cmd_status)
    q = actions.add_parser("status", help=short, description=long)
    q.add_argument("paths", nargs="+", metavar="RUN_OR_FILE")
    q.add_argument("--all", action="store_true", help="list every plain file too")
    q.set_defaults(func=cmd_status)
