"""Passphrases (issue 7 item 9): kits get a generated one, chosen ones must be strong, and
reading an existing file is never checked."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import resources
from pathlib import Path

import pytest
from helpers import PASSPHRASE, cg, cg_json, cg_proc, tree

from cloudguard import format as fmt
from cloudguard import keys
from cloudguard import passphrase as pw
from cloudguard.chain import Secret
from cloudguard.errors import KeyStoreError, UsageError

# The SHA-256 of eff_large_wordlist.txt as EFF publishes it (cloudguard/data/README.md).
EFF_LARGE_SHA256 = "addd35536511597a02fa0a9ff1e5284677b8883b83e986e43f15a3db996b903e"
WEAK = ("x", "password1", "test-passphrase", "Summer2024!", "aaaaaaaaaaaaaaaaaaaa")


def vault(remote: str, tmp_path: Path) -> Path:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("kept by the kit")
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    return a


def test_shipped_wordlist_is_eff_large_unmodified() -> None:
    raw = resources.files("cloudguard").joinpath("data", pw.WORDLIST).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == EFF_LARGE_SHA256
    words = pw.wordlist()
    assert len(set(words)) == 7776 and words[0] == "abacus" and words[-1] == "zoom"


def test_generated_passphrase_is_eight_list_words_over_100_bits() -> None:
    words = set(pw.wordlist())
    made = [pw.generate() for _ in range(20)]
    for phrase in made:
        parts = phrase.split(" ")
        assert len(parts) == 8 and all(p in words for p in parts)
        pw.require_strong(phrase, "a test")  # a generated one always passes the check
    assert len(set(made)) == 20
    assert pw.entropy_bits() >= 100


def test_key_export_generates_a_passphrase_that_opens_the_kit(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    result = cg_json("key", "export", str(kit), "--folder", str(a))
    phrase = result["passphrase"]
    assert phrase != PASSPHRASE
    assert len(phrase.split(" ")) >= 8 and set(phrase.split(" ")) <= set(pw.wordlist())
    assert keys.read_kit(kit, phrase).rid == result["id"]
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        keys.read_kit(kit, PASSPHRASE)  # CLOUDGUARD_PASSPHRASE played no part
    assert phrase not in kit.read_text()
    # A second device joins with it (its new key file takes the same, strong, passphrase).
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", phrase)
    b = tmp_path / "b"
    cg("clone", local_remote, str(b), "--key-file", str(kit))
    assert tree(b) == tree(a)


def test_generated_passphrase_is_shown_once_on_stderr(local_remote: str, tmp_path: Path
                                                      ) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    proc = cg_proc("key", "export", str(kit), "--folder", str(a))
    assert proc.returncode == 0, proc.stderr
    assert "write it down" in proc.stderr and "only this once" in proc.stderr
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    phrase = next(ln for ln in lines if len(ln.split(" ")) == 8 and
                  set(ln.split(" ")) <= set(pw.wordlist()))
    assert phrase not in proc.stdout and f"written to {kit}" in proc.stdout
    keys.read_kit(kit, phrase)


@pytest.mark.parametrize("weak", WEAK)
def test_weak_chosen_kit_passphrase_is_refused(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, weak: str
                                               ) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    listing = sorted(os.listdir(Path(local_remote) / "keys"))
    before = [(Path(local_remote) / "keys" / n).read_bytes() for n in listing]
    # The device key stays cached in this process from init, so only the kit asks for one.
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", weak)
    result = cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase", code=2)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "too weak" in message
    assert "leave out --choose-passphrase to get a generated one" in message
    assert not kit.exists()
    assert [(Path(local_remote) / "keys" / n).read_bytes() for n in listing] == before


def test_strong_chosen_kit_passphrase_is_accepted(local_remote: str, tmp_path: Path) -> None:
    a, kit = vault(local_remote, tmp_path), tmp_path / "kit.json"
    result = cg_json("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    assert "passphrase" not in result
    assert keys.read_kit(kit, PASSPHRASE).rid == result["id"]


def test_weak_device_key_passphrase_is_refused(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    a.mkdir()
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "x")
    proc = cg_proc("init", str(a), "--remote", local_remote)
    assert proc.returncode == 2
    assert "passphrase for the device key file is too weak" in proc.stderr
    assert "cloudguard key passphrase" in proc.stderr
    assert not os.listdir(local_remote)
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
    cg("init", str(a), "--remote", local_remote)  # nothing was left half made


def test_reading_is_never_checked(local_remote: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A device key file and a kit sealed with a weak passphrase (by an older version) open."""
    a = vault(local_remote, tmp_path)
    (key_file,) = Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key")
    doc = json.loads(key_file.read_text())
    raw = fmt.open_with_passphrase(doc, PASSPHRASE)
    meta = {k: v for k, v in doc.items() if k not in ("kdf", "nonce", "ct")}
    key_file.write_text(json.dumps(fmt.seal_with_passphrase(raw, "x", meta, log_n=10)))
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "x")
    proc = cg_proc("status", "--folder", str(a))  # a fresh process: the key file is read
    assert proc.returncode == 0, proc.stderr

    kit = tmp_path / "weak-kit.json"
    secret = Secret.generate()
    keys.write_kit(kit, "v" * 64, "r" * 16, "c" * 64, secret, "x")
    assert keys.read_kit(kit, "x").secret.raw() == secret.raw()
    assert keys.get_passphrase("an existing file") == "x"


def test_prompted_passphrase_is_checked_before_it_is_repeated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    asked: list[str] = []

    def answer(answers: list[str]) -> None:
        def fake(prompt: str = "") -> str:
            asked.append(prompt)
            return answers.pop(0)
        monkeypatch.setattr(keys.getpass, "getpass", fake)

    answer(["hunter2"])
    with pytest.raises(UsageError, match="too weak"):
        keys.get_passphrase("the device key file", confirm=True)
    assert asked == ["Passphrase for the device key file: "]  # not asked to repeat a weak one
    answer([PASSPHRASE, PASSPHRASE])
    assert keys.get_passphrase("the device key file", confirm=True) == PASSPHRASE
    answer([PASSPHRASE, PASSPHRASE + "!"])
    with pytest.raises(UsageError, match="do not match"):
        keys.get_passphrase("the device key file", confirm=True)
    answer(["hunter2"])
    assert keys.get_passphrase("an existing file") == "hunter2"  # reading: no check


def test_long_passphrases_are_rated_on_their_first_72_characters() -> None:
    long = "correct horse battery staple " * 10
    assert pw.rate(long)[0] >= pw.MIN_GUESSES_LOG10  # no ValueError from zxcvbn
    with pytest.raises(UsageError):
        pw.require_strong("a" * 200, "a test")


def test_key_passphrase_command_prints_a_generated_one() -> None:
    result = cg_json("key", "passphrase")
    assert len(result["passphrase"].split(" ")) == 8 and result["bits"] >= 100
    assert cg("key", "passphrase").stdout.strip() != result["passphrase"]
